//! Generates the tonic client and server stubs of the test gRPC services
//! (src/grpc.rs) from Rust descriptions: no `.proto` file, so no `protoc`.
use tonic_build::manual::{Builder, Method, Service};

fn method(name: &str, route: &str) -> tonic_build::manual::MethodBuilder {
    Method::builder()
        .name(name)
        .route_name(route)
        .input_type("crate::grpc::EchoRequest")
        .output_type("crate::grpc::EchoReply")
        .codec_path("tonic_prost::ProstCodec")
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    // `elbtest.Echo`: one call of each kind the issue asks for.
    let echo = Service::builder()
        .name("Echo")
        .package("elbtest")
        .method(method("unary", "Unary").build())
        .method(method("count", "Count").server_streaming().build())
        .method(
            method("chat", "Chat")
                .client_streaming()
                .server_streaming()
                .build(),
        )
        .build();
    // `elbtest.Mirror`: a second service, so routing by path can pick an
    // upstream per service.
    let mirror = Service::builder()
        .name("Mirror")
        .package("elbtest")
        .method(method("unary", "Unary").build())
        .build();
    Builder::new().compile(&[echo, mirror]);
}
