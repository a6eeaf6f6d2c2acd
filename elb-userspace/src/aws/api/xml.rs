//! XML writing for the Query API's documented response shapes. Pure.
use std::fmt::Write;

use super::error::ApiError;

pub const NAMESPACE: &str = "http://elasticloadbalancing.amazonaws.com/doc/2012-06-01/";

/// Text and attribute values with `&<>"'` escaped.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// A result element's contents, written in order.
#[derive(Debug, Default)]
pub struct Xml {
    out: String,
}

impl Xml {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn open(&mut self, tag: &str) -> &mut Self {
        let _ = write!(self.out, "<{tag}>");
        self
    }

    pub fn close(&mut self, tag: &str) -> &mut Self {
        let _ = write!(self.out, "</{tag}>");
        self
    }

    /// `<tag>text</tag>`.
    pub fn leaf(&mut self, tag: &str, text: impl std::fmt::Display) -> &mut Self {
        let _ = write!(self.out, "<{tag}>{}</{tag}>", escape(&text.to_string()));
        self
    }

    /// `<tag><member>..</member>...</tag>`, each member written by `item`.
    pub fn members<T>(
        &mut self,
        tag: &str,
        items: impl IntoIterator<Item = T>,
        mut item: impl FnMut(&mut Self, T),
    ) -> &mut Self {
        self.open(tag);
        for value in items {
            self.open("member");
            item(self, value);
            self.close("member");
        }
        self.close(tag)
    }

    /// `<tag><member>text</member>...</tag>`.
    pub fn text_members<T: std::fmt::Display>(
        &mut self,
        tag: &str,
        items: impl IntoIterator<Item = T>,
    ) -> &mut Self {
        self.members(tag, items, |xml, text| {
            xml.out.push_str(&escape(&text.to_string()));
        })
    }

    pub fn into_string(self) -> String {
        self.out
    }
}

/// `<{Action}Response><{Action}Result>result</...><ResponseMetadata>...`.
pub fn response(action: &str, result: &str, request_id: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <{action}Response xmlns=\"{NAMESPACE}\">\
         <{action}Result>{result}</{action}Result>\
         <ResponseMetadata><RequestId>{}</RequestId></ResponseMetadata>\
         </{action}Response>\n",
        escape(request_id)
    )
}

/// The Query API's `ErrorResponse`.
pub fn error_response(error: &ApiError, request_id: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <ErrorResponse xmlns=\"{NAMESPACE}\">\
         <Error><Type>{}</Type><Code>{}</Code><Message>{}</Message></Error>\
         <RequestId>{}</RequestId></ErrorResponse>\n",
        error.fault(),
        error.code,
        escape(&error.message),
        escape(request_id)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_wrap_the_result_and_the_request_id() {
        let mut xml = Xml::new();
        xml.leaf("DNSName", "my-lb-1.us-east-1.elb.amazonaws.com");
        let text = response("CreateLoadBalancer", &xml.into_string(), "rid-1");
        assert!(text.contains(
            "<CreateLoadBalancerResponse xmlns=\"http://elasticloadbalancing.amazonaws.com/doc/2012-06-01/\">"
        ));
        assert!(text.contains(
            "<CreateLoadBalancerResult><DNSName>my-lb-1.us-east-1.elb.amazonaws.com</DNSName></CreateLoadBalancerResult>"
        ));
        assert!(text.contains("<ResponseMetadata><RequestId>rid-1</RequestId></ResponseMetadata>"));
    }

    #[test]
    fn members_and_escaping() {
        let mut xml = Xml::new();
        xml.text_members("AvailabilityZones", ["a<b", "c&d"]);
        xml.members("Instances", ["i-1"], |xml, id| {
            xml.leaf("InstanceId", id);
        });
        assert_eq!(
            xml.into_string(),
            "<AvailabilityZones><member>a&lt;b</member><member>c&amp;d</member></AvailabilityZones>\
             <Instances><member><InstanceId>i-1</InstanceId></member></Instances>"
        );
    }

    #[test]
    fn errors_carry_type_code_and_message() {
        let text = error_response(&ApiError::lb_not_found("x<"), "rid");
        assert!(text.contains(
            "<Error><Type>Sender</Type><Code>LoadBalancerNotFound</Code>\
             <Message>There is no ACTIVE Load Balancer named &apos;x&lt;&apos;</Message></Error>"
        ));
        assert!(text.contains("<RequestId>rid</RequestId></ErrorResponse>"));
    }
}
