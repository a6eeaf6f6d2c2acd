//! gRPC end to end through a real elb: a tonic client speaks HTTP/2 to an
//! elb listener (h2c with prior knowledge, or TLS with ALPN h2) and elb speaks
//! HTTP/2 to real tonic servers (the upstream server parameter `h2`).
//!
//! Each check runs straight to the servers (`direct_*`, so a failure through
//! elb is elb's), through an h2c listener and through an https listener (to
//! upstreams with `h2`), and to upstreams over TLS (`tls h2`, ALPN h2, verified
//! with `--upstream-ca`). The routing table sends each gRPC service to its own
//! upstream by path prefix (`/package.Service/Method`).
use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use elb_tests::{
    grpc::{
        self, EchoReply, EchoRequest, GrpcServer, Service, TRAILER, TRAILER_BIN, failure_for,
        parse_grpc_timeout,
        proto::{echo_client::EchoClient, mirror_client::MirrorClient},
    },
    l7::{Setup, start_with},
    pki::Authority,
    ports::free_port,
};
use serde_json::json;
use tokio::{runtime::Runtime, sync::mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Status, transport::Channel};

/// The `:authority` (and SNI name) the calls carry: the domain elb routes.
const AUTHORITY: &str = "grpc.example";

/// Where a check's calls go: channels to each service and the servers that
/// must have answered.
struct Target<'a> {
    echo: Channel,
    mirror: Channel,
    echo_server: &'a GrpcServer,
    mirror_server: &'a GrpcServer,
    /// The `X-Forwarded-Proto` elb must add; `None` straight to the servers.
    forwarded_proto: Option<&'static str>,
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime")
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Transport {
    /// HTTP/2 with prior knowledge (through elb: an `http` listener with
    /// `"http2": true`; to an upstream: server parameter `h2`).
    H2c,
    /// TLS with ALPN h2 (an `https` listener; server parameters `tls h2`).
    Tls,
}

/// A test CA and a server certificate it signed.
struct Pki {
    ca: String,
    server_cert: String,
    server_key: String,
}

/// A new CA (named after `tag`) and a server certificate for `name`.
fn pki(tag: &str, name: &str) -> Pki {
    let authority = Authority::new(tag).expect("test CA");
    let (server_cert, server_key) = authority.server(&[name], name).expect("server certificate");
    Pki {
        ca: authority.ca,
        server_cert,
        server_key,
    }
}

/// The gRPC servers, over `transport` with a certificate from `chain`.
fn servers(transport: Transport, chain: &Pki) -> (GrpcServer, GrpcServer) {
    let start = |name, service| match transport {
        Transport::H2c => GrpcServer::start(name, service),
        Transport::Tls => {
            GrpcServer::start_tls(name, service, &chain.server_cert, &chain.server_key)
        }
    };
    (
        start("echo-1", Service::Echo).expect("echo gRPC server"),
        start("mirror-1", Service::Mirror).expect("mirror gRPC server"),
    )
}

/// A client channel to `addr` over `transport`, trusting `ca`.
async fn channel(transport: Transport, addr: SocketAddr, ca: &str) -> Channel {
    let channel = match transport {
        Transport::H2c => grpc::channel_h2c(addr, AUTHORITY).await,
        Transport::Tls => grpc::channel_tls(addr, AUTHORITY, ca).await,
    };
    channel.unwrap_or_else(|e| panic!("connect to {addr}: {e:#}"))
}

fn text(text: &str) -> EchoRequest {
    EchoRequest {
        text: text.to_owned(),
        ..EchoRequest::default()
    }
}

/// Unary calls, one of them larger than HTTP/2's initial flow-control
/// window, answered by the Echo server with the headers elb adds.
async fn unary(t: &Target<'_>) {
    let mut client = EchoClient::new(t.echo.clone());
    let reply = client
        .unary(text("hello"))
        .await
        .expect("unary call")
        .into_inner();
    assert_eq!(
        reply,
        EchoReply {
            text: "hello".into(),
            seq: 0,
            server: t.echo_server.name().into()
        }
    );
    let big = "x".repeat(1 << 20);
    let reply = client
        .unary(text(&big))
        .await
        .expect("1 MiB unary call")
        .into_inner();
    assert!(reply.text == big, "the 1 MiB text came back changed");
    let calls = t.echo_server.calls();
    assert_eq!(calls.len(), 2, "{calls:?}");
    let call = &calls[0];
    assert_eq!(call.path, "/elbtest.Echo/Unary");
    assert_eq!(call.header("content-type"), Some("application/grpc"));
    if let Some(proto) = t.forwarded_proto {
        assert_eq!(call.header("x-forwarded-proto"), Some(proto), "{call:?}");
        assert_eq!(
            call.header("x-forwarded-for"),
            Some("127.0.0.1"),
            "{call:?}"
        );
    }
}

/// A server-streaming call: every message, in order, then an OK status.
async fn server_streaming(t: &Target<'_>) {
    const N: u32 = 500;
    let mut client = EchoClient::new(t.echo.clone());
    let request = EchoRequest {
        text: "n".into(),
        count: N,
        ..EchoRequest::default()
    };
    let mut stream = client
        .count(request)
        .await
        .expect("count call")
        .into_inner();
    let mut seen = 0;
    while let Some(reply) = stream.message().await.expect("a reply or the OK status") {
        assert_eq!(
            (reply.seq, reply.text.as_str(), reply.server.as_str()),
            (seen, format!("n #{seen}").as_str(), t.echo_server.name()),
            "reply {seen} out of order"
        );
        seen += 1;
    }
    assert_eq!(seen, N, "replies before the OK status");
}

/// A bidirectional call in lockstep: each message is sent only after the
/// previous answer came back, so nothing on the way may wait for the end
/// of the request stream.
async fn bidi(t: &Target<'_>) {
    const N: u32 = 20;
    let mut client = EchoClient::new(t.echo.clone());
    let (tx, rx) = mpsc::channel(1);
    tx.send(text("ping 0")).await.expect("queue the first ping");
    let mut answers = client
        .chat(ReceiverStream::new(rx))
        .await
        .expect("chat call")
        .into_inner();
    for i in 0..N {
        if i > 0 {
            tx.send(text(&format!("ping {i}")))
                .await
                .expect("queue a ping");
        }
        let answer = tokio::time::timeout(Duration::from_secs(5), answers.message())
            .await
            .unwrap_or_else(|_| panic!("no answer to ping {i} within 5 s: held on the way"))
            .expect("an answer")
            .expect("the stream still open");
        assert_eq!(
            (answer.seq, answer.text),
            (i, format!("ping {i}")),
            "answer {i}"
        );
    }
    drop(tx);
    let end = tokio::time::timeout(Duration::from_secs(5), answers.message())
        .await
        .expect("the OK status after the client's end of stream");
    assert!(matches!(end, Ok(None)), "{end:?}");
    assert_eq!(t.echo_server.messages(), u64::from(N));
}

/// The status arrived as the server sent it: code, message, details and
/// trailing metadata, ASCII and binary.
fn assert_same_status(got: &Status, sent: &Status) {
    assert_eq!(got.code(), sent.code(), "{got:?}");
    assert_eq!(got.message(), sent.message(), "{got:?}");
    assert_eq!(got.details(), sent.details(), "{got:?}");
    assert_eq!(
        got.metadata().get(TRAILER),
        sent.metadata().get(TRAILER),
        "{got:?}"
    );
    assert_eq!(
        got.metadata().get_bin(TRAILER_BIN),
        sent.metadata().get_bin(TRAILER_BIN),
        "{got:?}"
    );
}

/// Error statuses: a unary call's (Trailers-Only: status in the response
/// headers, no body) and a stream's after its messages (in HTTP/2 trailers).
async fn errors(t: &Target<'_>) {
    let mut client = EchoClient::new(t.echo.clone());
    let request = EchoRequest {
        text: "missing".into(),
        fail_code: Code::NotFound as i32,
        // Non-ASCII and '%' are percent-encoded in grpc-message.
        fail_message: "no such thing: ünïcode 100% \"quoted\"".into(),
        ..EchoRequest::default()
    };
    let status = client
        .unary(request.clone())
        .await
        .expect_err("the unary call fails");
    assert_same_status(&status, &failure_for(&request));

    let request = EchoRequest {
        text: "denied".into(),
        count: 3,
        fail_code: Code::PermissionDenied as i32,
        fail_message: "after three".into(),
        ..EchoRequest::default()
    };
    let mut stream = client
        .count(request.clone())
        .await
        .expect("count call")
        .into_inner();
    for seq in 0..3 {
        let reply = stream.message().await.expect("a reply before the error");
        assert_eq!(reply.map(|r| r.seq), Some(seq));
    }
    let status = stream.message().await.expect_err("the stream's status");
    assert_same_status(&status, &failure_for(&request));
}

/// The client's deadline reaches the server as `grpc-timeout`, unchanged;
/// a call that outlives it ends with the server's DEADLINE_EXCEEDED (a
/// server-streaming call, whose headers come early: see `grpc`'s module
/// doc), and one within it succeeds.
async fn deadline(t: &Target<'_>) {
    let mut client = EchoClient::new(t.echo.clone());
    let mut request = Request::new(EchoRequest {
        text: "slow".into(),
        count: 2,
        sleep_ms: 10_000,
        ..EchoRequest::default()
    });
    request.set_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let mut stream = client
        .count(request)
        .await
        .expect("count call")
        .into_inner();
    for seq in 0..2 {
        let reply = stream.message().await.expect("a reply before the deadline");
        assert_eq!(reply.map(|r| r.seq), Some(seq));
    }
    let status = stream.message().await.expect_err("past the deadline");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(
        status.message(),
        "the call needed 10000 ms, past its 300ms deadline",
        "the server's status"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "DEADLINE_EXCEEDED after {:?}",
        started.elapsed()
    );
    let calls = t.echo_server.calls();
    let timeout = calls[0]
        .header("grpc-timeout")
        .expect("grpc-timeout sent on");
    assert_eq!(
        parse_grpc_timeout(timeout),
        Some(Duration::from_millis(300)),
        "grpc-timeout {timeout}"
    );

    let mut request = Request::new(EchoRequest {
        text: "quick".into(),
        sleep_ms: 50,
        ..EchoRequest::default()
    });
    request.set_timeout(Duration::from_secs(5));
    let reply = client.unary(request).await.expect("within its deadline");
    assert_eq!(reply.into_inner().text, "quick");
}

/// A unary call the client abandons while the server works on it: the
/// reset (RST_STREAM) reaches the server, which drops its work instead of
/// finishing a call nobody waits for.
async fn cancellation(t: &Target<'_>) {
    let mut client = EchoClient::new(t.echo.clone());
    let request = EchoRequest {
        text: "abandoned".into(),
        sleep_ms: 10_000,
        ..EchoRequest::default()
    };
    let call = tokio::spawn(async move { client.unary(request).await });
    let started = Instant::now();
    while t.echo_server.calls().is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the call did not reach the server within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Dropping the call's future resets its stream.
    call.abort();
    assert!(call.await.is_err_and(|e| e.is_cancelled()));
    let started = Instant::now();
    while t.echo_server.cancelled() == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "the server still works on the abandoned call after 3 s: the reset did not reach it"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(t.echo_server.cancelled(), 1);
}

/// Many calls at once on one client connection (HTTP/2 streams side by
/// side): unary calls and server streams, each answer on its own stream.
async fn concurrent(t: &Target<'_>) {
    const UNARY: usize = 100;
    const STREAMS: u32 = 10;
    const PER_STREAM: u32 = 100;
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..UNARY {
        let mut client = EchoClient::new(t.echo.clone());
        calls.spawn(async move {
            let reply = client.unary(text(&format!("c{i}"))).await;
            let reply = reply.unwrap_or_else(|e| panic!("unary call {i}: {e:?}"));
            assert_eq!(reply.into_inner().text, format!("c{i}"));
        });
    }
    for i in 0..STREAMS {
        let mut client = EchoClient::new(t.echo.clone());
        calls.spawn(async move {
            let request = EchoRequest {
                text: format!("s{i}"),
                count: PER_STREAM,
                ..EchoRequest::default()
            };
            let mut stream = client
                .count(request)
                .await
                .unwrap_or_else(|e| panic!("stream {i}: {e:?}"))
                .into_inner();
            let mut seen = 0;
            while let Some(reply) = stream.message().await.expect("a reply or OK") {
                assert_eq!(reply.text, format!("s{i} #{seen}"), "stream {i}");
                seen += 1;
            }
            assert_eq!(seen, PER_STREAM, "stream {i}");
        });
    }
    let finished = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(done) = calls.join_next().await {
            done.expect("a call task");
        }
    })
    .await;
    assert!(finished.is_ok(), "calls unfinished after 30 s");
    // How many connections the server saw (elb's pool per server): shown,
    // not judged here.
    eprintln!(
        "{} calls over {} upstream connection(s)",
        t.echo_server.calls().len(),
        t.echo_server.connections()
    );
}

/// Each service goes to its own server; a server never sees the other's.
async fn routing(t: &Target<'_>) {
    let mut echo = EchoClient::new(t.echo.clone());
    let mut mirror = MirrorClient::new(t.mirror.clone());
    for i in 0..3 {
        let reply = echo.unary(text(&format!("e{i}"))).await.expect("Echo call");
        assert_eq!(reply.into_inner().server, t.echo_server.name());
        let reply = mirror
            .unary(text(&format!("m{i}")))
            .await
            .expect("Mirror call");
        assert_eq!(reply.into_inner().server, t.mirror_server.name());
    }
    let paths = |server: &GrpcServer| -> Vec<String> {
        server.calls().into_iter().map(|call| call.path).collect()
    };
    assert_eq!(paths(t.echo_server), vec!["/elbtest.Echo/Unary"; 3]);
    assert_eq!(paths(t.mirror_server), vec!["/elbtest.Mirror/Unary"; 3]);
}

// --- straight to the servers: the harness itself works ---

/// Runs `check` against the two servers directly, over h2c or TLS.
macro_rules! direct {
    ($($name:ident: $check:ident, $transport:ident;)*) => {$(
        #[test]
        fn $name() {
            let transport = Transport::$transport;
            let chain = pki("direct", AUTHORITY);
            let (echo_server, mirror_server) = servers(transport, &chain);
            runtime().block_on(async {
                let target = Target {
                    echo: channel(transport, echo_server.addr(), &chain.ca).await,
                    mirror: channel(transport, mirror_server.addr(), &chain.ca).await,
                    echo_server: &echo_server,
                    mirror_server: &mirror_server,
                    forwarded_proto: None,
                };
                $check(&target).await;
            });
        }
    )*};
}

direct! {
    direct_unary: unary, H2c;
    direct_server_streaming: server_streaming, H2c;
    direct_bidi: bidi, H2c;
    direct_errors: errors, H2c;
    direct_deadline: deadline, H2c;
    direct_cancellation: cancellation, H2c;
    direct_routing: routing, H2c;
    direct_concurrent: concurrent, H2c;
    direct_tls_unary: unary, Tls;
    direct_tls_bidi: bidi, Tls;
    direct_tls_errors: errors, Tls;
}

/// A server answers UNIMPLEMENTED for the other service: a call routed to
/// the wrong upstream cannot pass the routing check.
#[test]
fn direct_other_service_is_unimplemented() {
    let chain = pki("direct", AUTHORITY);
    let (echo_server, _mirror_server) = servers(Transport::H2c, &chain);
    runtime().block_on(async {
        let channel = channel(Transport::H2c, echo_server.addr(), &chain.ca).await;
        let status = MirrorClient::new(channel)
            .unary(text("lost"))
            .await
            .expect_err("Mirror on the Echo server");
        assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    });
}

// --- through elb ---

/// elb with a `client`-side listener, routing `AUTHORITY` by service:
/// `/elbtest.Mirror/` to upstream `grpc-mirror`, the rest to `grpc-echo`,
/// each speaking HTTP/2 to its gRPC server over `upstream`.
struct Fixture {
    setup: Setup,
    echo_server: GrpcServer,
    mirror_server: GrpcServer,
    listener: SocketAddr,
    client: Transport,
    /// The CA the TLS client trusts.
    ca: String,
    /// Holds the CA file elb verifies TLS upstreams with.
    _upstream_ca: tempfile::TempDir,
}

impl Fixture {
    fn start(client: Transport, upstream: Transport) -> Self {
        // The upstreams' certificate is for 127.0.0.1: the name elb sets as
        // SNI and verifies, as the servers are given by address.
        let upstream_chain = pki("grpc-upstream", "127.0.0.1");
        let upstream_ca = tempfile::tempdir().expect("temp dir");
        let ca_file = upstream_ca.path().join("ca.pem");
        std::fs::write(&ca_file, &upstream_chain.ca).expect("write the upstream CA");
        let ca_file = ca_file.to_string_lossy().into_owned();
        let setup = match upstream {
            Transport::H2c => start_with(&[]),
            Transport::Tls => start_with(&["--upstream-ca", &ca_file]),
        };
        let (echo_server, mirror_server) = servers(upstream, &upstream_chain);
        let params = match upstream {
            Transport::H2c => "h2",
            Transport::Tls => "tls h2",
        };
        let elb = &setup.elb;
        elb.put_upstream("grpc-echo", &[(echo_server.addr(), params)]);
        elb.put_upstream("grpc-mirror", &[(mirror_server.addr(), params)]);
        elb.admin_ok(
            "PUT",
            "domain",
            Some(json!({AUTHORITY: {"init": "service", "rules": {
                "service": {"type": "path",
                    "args": {"pattern": "/elbtest.Mirror/", "succ": "mirror", "fail": "echo"}},
                "mirror": {"type": "backend", "args": {"servername": "grpc-mirror"}},
                "echo": {"type": "backend", "args": {"servername": "grpc-echo"}}}}})),
        );
        let listener = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let chain = pki("grpc", AUTHORITY);
        let listener_doc = match client {
            Transport::H2c => {
                json!({"address": listener.to_string(), "protocol": "http", "http2": true})
            }
            Transport::Tls => {
                elb.admin_ok(
                    "PUT",
                    "cert",
                    Some(json!({"grpc": {"cert": chain.server_cert, "key": chain.server_key}})),
                );
                json!({"address": listener.to_string(), "protocol": "https", "http2": true,
                    "default_certificate": "grpc"})
            }
        };
        // The PUT answers once the listener listens.
        elb.admin_ok("PUT", "listener", Some(json!({ "grpc": listener_doc })));
        Self {
            setup,
            echo_server,
            mirror_server,
            listener,
            client,
            ca: chain.ca,
            _upstream_ca: upstream_ca,
        }
    }

    async fn target(&self) -> Target<'_> {
        let channel = channel(self.client, self.listener, &self.ca).await;
        Target {
            echo: channel.clone(),
            mirror: channel,
            echo_server: &self.echo_server,
            mirror_server: &self.mirror_server,
            forwarded_proto: Some(match self.client {
                Transport::H2c => "http",
                Transport::Tls => "https",
            }),
        }
    }
}

/// Runs `check` through elb: client to elb over the first transport, elb
/// to the gRPC servers over the second.
macro_rules! through_elb {
    ($($name:ident: $check:ident, $client:ident -> $upstream:ident;)*) => {$(
        #[test]
        fn $name() {
            let fixture = Fixture::start(Transport::$client, Transport::$upstream);
            runtime().block_on(async {
                $check(&fixture.target().await).await;
            });
            // elb is still up: it did not crash on the way.
            assert!(
                fixture.setup.elb.admin_ok("GET", "upstream", None).is_object(),
                "elb's admin API after the calls"
            );
        }
    )*};
}

through_elb! {
    h2c_unary: unary, H2c -> H2c;
    h2c_server_streaming: server_streaming, H2c -> H2c;
    h2c_bidi: bidi, H2c -> H2c;
    h2c_errors: errors, H2c -> H2c;
    h2c_deadline: deadline, H2c -> H2c;
    h2c_cancellation: cancellation, H2c -> H2c;
    h2c_routing: routing, H2c -> H2c;
    h2c_concurrent: concurrent, H2c -> H2c;
    tls_unary: unary, Tls -> H2c;
    tls_server_streaming: server_streaming, Tls -> H2c;
    tls_bidi: bidi, Tls -> H2c;
    tls_errors: errors, Tls -> H2c;
    tls_deadline: deadline, Tls -> H2c;
    tls_cancellation: cancellation, Tls -> H2c;
    tls_routing: routing, Tls -> H2c;
    tls_concurrent: concurrent, Tls -> H2c;
    tls_upstream_unary: unary, H2c -> Tls;
    tls_upstream_server_streaming: server_streaming, H2c -> Tls;
    tls_upstream_bidi: bidi, H2c -> Tls;
    tls_upstream_errors: errors, H2c -> Tls;
    tls_upstream_deadline: deadline, H2c -> Tls;
    tls_upstream_cancellation: cancellation, H2c -> Tls;
    tls_upstream_concurrent: concurrent, H2c -> Tls;
    tls_to_tls_upstream_routing: routing, Tls -> Tls;
}
