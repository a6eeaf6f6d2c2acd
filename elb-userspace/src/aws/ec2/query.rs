//! EC2's Query protocol for `DescribeInstances`, without I/O: the request
//! body, the endpoint, and the XML answers (a page of instances, or an
//! error).
use std::net::{IpAddr, Ipv6Addr};

use aws_smithy_xml::decode::{Document, ScopedDecoder, XmlDecodeError, try_data};

use super::Ec2Instance;

/// The API version elb speaks (the current EC2 Query API).
pub const API_VERSION: &str = "2016-11-15";

/// The form-encoded body of one `DescribeInstances` call.
pub fn request_body(ids: &[String], next_token: Option<&str>) -> String {
    let mut form = form_urlencoded::Serializer::new(String::new());
    form.append_pair("Action", "DescribeInstances");
    form.append_pair("Version", API_VERSION);
    for (index, id) in ids.iter().enumerate() {
        form.append_pair(&format!("InstanceId.{}", index + 1), id);
    }
    if let Some(token) = next_token {
        form.append_pair("NextToken", token);
    }
    form.finish()
}

/// EC2's regional endpoint, as the SDK resolves it without FIPS or dual
/// stack.
pub fn regional_endpoint(region: &str) -> String {
    let suffix = if region.starts_with("cn-") {
        "amazonaws.com.cn"
    } else {
        "amazonaws.com"
    };
    format!("https://ec2.{region}.{suffix}")
}

/// One page of a `DescribeInstances` answer.
#[derive(Debug, PartialEq, Eq)]
pub struct Page {
    pub instances: Vec<Ec2Instance>,
    pub next_token: Option<String>,
}

/// An error answer: `<Response><Errors><Error><Code>`…
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorAnswer {
    pub code: String,
    pub message: String,
    pub request_id: Option<String>,
}

/// Reads a `DescribeInstancesResponse`; `Err` says what is wrong with it.
pub fn parse_page(xml: &[u8]) -> Result<Page, String> {
    let mut doc = Document::try_from(xml).map_err(|e| format!("not XML: {e}"))?;
    let mut root = doc.root_element().map_err(describe)?;
    if !root.start_el().matches("DescribeInstancesResponse") {
        return Err(format!(
            "the answer is a <{}>, not a <DescribeInstancesResponse>",
            root.start_el().local()
        ));
    }
    let mut page = Page {
        instances: Vec::new(),
        next_token: None,
    };
    while let Some(mut tag) = root.next_tag() {
        if tag.start_el().matches("reservationSet") {
            while let Some(mut reservation) = tag.next_tag() {
                while let Some(mut field) = reservation.next_tag() {
                    if field.start_el().matches("instancesSet") {
                        while let Some(mut item) = field.next_tag() {
                            page.instances.push(parse_instance(&mut item)?);
                        }
                    }
                }
            }
        } else if tag.start_el().matches("nextToken") {
            let token = text(&mut tag)?;
            page.next_token = (!token.is_empty()).then_some(token);
        }
    }
    Ok(page)
}

/// Reads an error answer; `None` if `xml` is not one.
pub fn parse_error(xml: &[u8]) -> Option<ErrorAnswer> {
    let mut doc = Document::try_from(xml).ok()?;
    let mut root = doc.root_element().ok()?;
    if !root.start_el().matches("Response") {
        return None;
    }
    let (mut code, mut message, mut request_id) = (None, String::new(), None);
    while let Some(mut tag) = root.next_tag() {
        if tag.start_el().matches("Errors") {
            // The first error: EC2 sends one.
            if let Some(mut error) = tag.next_tag() {
                while let Some(mut field) = error.next_tag() {
                    if field.start_el().matches("Code") {
                        code = text(&mut field).ok();
                    } else if field.start_el().matches("Message") {
                        message = text(&mut field).unwrap_or_default();
                    }
                }
            }
        } else if tag.start_el().matches("RequestID") || tag.start_el().matches("RequestId") {
            request_id = text(&mut tag).ok();
        }
    }
    Some(ErrorAnswer {
        code: code?,
        message,
        request_id,
    })
}

/// Whether a failed call is worth another try, as the SDK's standard retry
/// mode judges it: throttling and the service's own failures.
pub fn retryable(status: u16, code: Option<&str>) -> bool {
    const TRANSIENT: &[&str] = &[
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottledException",
        "RequestLimitExceeded",
        "RequestThrottled",
        "TooManyRequestsException",
        "InternalError",
        "InternalFailure",
        "ServiceUnavailable",
        "Unavailable",
    ];
    status >= 500 || status == 429 || code.is_some_and(|code| TRANSIENT.contains(&code))
}

fn parse_instance(item: &mut ScopedDecoder<'_, '_>) -> Result<Ec2Instance, String> {
    let (mut id, mut private_ip, mut ipv6_top, mut ipv6_nic, mut zone, mut state) =
        (None, None, None, None, None, String::new());
    while let Some(mut field) = item.next_tag() {
        let name = field.start_el().local().to_owned();
        match name.as_str() {
            "instanceId" => id = Some(text(&mut field)?),
            "privateIpAddress" => {
                let address = text(&mut field)?;
                if !address.is_empty() {
                    private_ip = Some(address);
                }
            }
            "ipv6Address" => ipv6_top = Some(text(&mut field)?),
            "placement" => {
                while let Some(mut placement) = field.next_tag() {
                    if placement.start_el().matches("availabilityZone") {
                        zone = Some(text(&mut placement)?);
                    }
                }
            }
            "instanceState" => {
                while let Some(mut part) = field.next_tag() {
                    if part.start_el().matches("name") {
                        state = text(&mut part)?;
                    }
                }
            }
            "networkInterfaceSet" => {
                while let Some(mut interface) = field.next_tag() {
                    while let Some(mut part) = interface.next_tag() {
                        if part.start_el().matches("ipv6AddressesSet") {
                            while let Some(mut entry) = part.next_tag() {
                                while let Some(mut address) = entry.next_tag() {
                                    if address.start_el().matches("ipv6Address") {
                                        let text = text(&mut address)?;
                                        if ipv6_nic.is_none() && text.parse::<Ipv6Addr>().is_ok() {
                                            ipv6_nic = Some(text);
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
    let instance_id = id.ok_or("an instance without an instanceId")?;
    let private_ip = private_ip
        .map(|text| {
            text.parse::<IpAddr>().map_err(|_| {
                format!("instance {instance_id}: privateIpAddress {text:?} is not an IP address")
            })
        })
        .transpose()?;
    // The interfaces' addresses first, then the instance's own field, as
    // the SDK-based look-up read them.
    let ipv6 = ipv6_nic
        .into_iter()
        .chain(ipv6_top)
        .find_map(|text| text.parse::<Ipv6Addr>().ok());
    Ok(Ec2Instance {
        instance_id,
        private_ip,
        ipv6,
        zone,
        state,
    })
}

fn text(tag: &mut ScopedDecoder<'_, '_>) -> Result<String, String> {
    try_data(tag).map(|t| t.into_owned()).map_err(describe)
}

fn describe(err: XmlDecodeError) -> String {
    format!("bad XML: {err}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<DescribeInstancesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
  <requestId>59dbff89-35bd-4eac-99ed-be587EXAMPLE</requestId>
  <reservationSet>
    <item>
      <reservationId>r-1</reservationId>
      <instancesSet>
        <item>
          <instanceId>i-0a</instanceId>
          <instanceState><code>16</code><name>running</name></instanceState>
          <placement><availabilityZone>us-east-1a</availabilityZone><tenancy>default</tenancy></placement>
          <privateIpAddress>10.0.0.5</privateIpAddress>
          <networkInterfaceSet>
            <item>
              <privateIpAddress>10.0.0.99</privateIpAddress>
              <ipv6AddressesSet><item><ipv6Address>2001:db8::5</ipv6Address></item></ipv6AddressesSet>
            </item>
          </networkInterfaceSet>
          <tagSet><item><key>instanceId</key><value>i-ffff</value></item></tagSet>
        </item>
        <item>
          <instanceId>i-0b</instanceId>
          <instanceState><code>48</code><name>terminated</name></instanceState>
          <placement><availabilityZone>us-east-1b</availabilityZone></placement>
          <privateIpAddress/>
          <ipv6Address>2001:db8::b</ipv6Address>
        </item>
      </instancesSet>
    </item>
  </reservationSet>
  <nextToken>abc+/=</nextToken>
</DescribeInstancesResponse>"#;

    #[test]
    fn a_page_gives_each_instance_its_own_fields_and_the_next_token() {
        let page = parse_page(PAGE.as_bytes()).expect("page");
        assert_eq!(
            page.instances,
            vec![
                Ec2Instance {
                    instance_id: "i-0a".into(),
                    private_ip: Some("10.0.0.5".parse().expect("ip")),
                    ipv6: Some("2001:db8::5".parse().expect("ip")),
                    zone: Some("us-east-1a".into()),
                    state: "running".into(),
                },
                Ec2Instance {
                    instance_id: "i-0b".into(),
                    private_ip: None,
                    ipv6: Some("2001:db8::b".parse().expect("ip")),
                    zone: Some("us-east-1b".into()),
                    state: "terminated".into(),
                },
            ]
        );
        assert_eq!(page.next_token.as_deref(), Some("abc+/="));
    }

    #[test]
    fn an_empty_answer_is_an_empty_last_page() {
        let xml = r#"<DescribeInstancesResponse><requestId>x</requestId><reservationSet/></DescribeInstancesResponse>"#;
        let page = parse_page(xml.as_bytes()).expect("page");
        assert_eq!(
            page,
            Page {
                instances: vec![],
                next_token: None
            }
        );
    }

    #[test]
    fn bad_answers_say_what_is_wrong() {
        let no_id = r#"<DescribeInstancesResponse><reservationSet><item><instancesSet><item><privateIpAddress>10.0.0.1</privateIpAddress></item></instancesSet></item></reservationSet></DescribeInstancesResponse>"#;
        assert_eq!(
            parse_page(no_id.as_bytes()),
            Err("an instance without an instanceId".into())
        );
        let bad_ip = r#"<DescribeInstancesResponse><reservationSet><item><instancesSet><item><instanceId>i-1</instanceId><privateIpAddress>ten</privateIpAddress></item></instancesSet></item></reservationSet></DescribeInstancesResponse>"#;
        assert_eq!(
            parse_page(bad_ip.as_bytes()),
            Err(r#"instance i-1: privateIpAddress "ten" is not an IP address"#.into())
        );
        let other = r#"<Something/>"#;
        assert!(parse_page(other.as_bytes()).is_err_and(|e| e.contains("<Something>")));
        assert!(parse_page(b"<<<").is_err());
    }

    #[test]
    fn an_error_answer_gives_its_code_message_and_request_id() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<Response><Errors><Error><Code>InvalidInstanceID.NotFound</Code><Message>The instance ID 'i-1' does not exist</Message></Error></Errors><RequestID>req-1</RequestID></Response>"#;
        assert_eq!(
            parse_error(xml.as_bytes()),
            Some(ErrorAnswer {
                code: "InvalidInstanceID.NotFound".into(),
                message: "The instance ID 'i-1' does not exist".into(),
                request_id: Some("req-1".into()),
            })
        );
        assert_eq!(parse_error(PAGE.as_bytes()), None);
        assert_eq!(parse_error(b"not xml"), None);
    }

    #[test]
    fn the_body_names_every_id_and_the_token_form_encoded() {
        let ids = vec!["i-1".to_owned(), "i-2".to_owned()];
        assert_eq!(
            request_body(&ids, Some("a+b/c=")),
            "Action=DescribeInstances&Version=2016-11-15&InstanceId.1=i-1&InstanceId.2=i-2&NextToken=a%2Bb%2Fc%3D"
        );
    }

    #[test]
    fn endpoints_and_retryable_failures() {
        assert_eq!(
            regional_endpoint("us-east-1"),
            "https://ec2.us-east-1.amazonaws.com"
        );
        assert_eq!(
            regional_endpoint("cn-north-1"),
            "https://ec2.cn-north-1.amazonaws.com.cn"
        );
        assert!(retryable(503, None));
        assert!(retryable(400, Some("RequestLimitExceeded")));
        assert!(!retryable(400, Some("InvalidInstanceID.NotFound")));
        assert!(!retryable(403, Some("AuthFailure")));
    }
}
