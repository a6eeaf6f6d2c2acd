//! Serving the exposition: the response (admin API's `/__erulb__/metrics`)
//! and the `--metrics ADDR` listener (`/metrics`, plain HTTP/1.1), both
//! under the admin API's access rules.
use std::{net::SocketAddr, sync::Arc};

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::{Format, Metrics};
use crate::{
    admin::access::{AccessPolicy, Refusal},
    http_util::{Body, full, text},
    takeover::HandoverSockets,
};

/// The path on the `--metrics` listener.
pub const PATH: &str = "/metrics";

/// 200 with the current exposition, in the format `headers` ask for.
/// Encoding a large configuration takes milliseconds of CPU: it runs on the
/// blocking pool, not on the thread whose connections it would stall.
pub async fn response(metrics: &Arc<Metrics>, headers: &http::HeaderMap) -> Response<Body> {
    let format = Format::negotiate(headers.get(header::ACCEPT).map(HeaderValue::as_bytes));
    let encoding = {
        let metrics = Arc::clone(metrics);
        tokio::task::spawn_blocking(move || metrics.encode(format))
    };
    let text = match encoding.await {
        Ok(text) => text,
        Err(error) => {
            tracing::error!(%error, "encoding the metrics failed");
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "encoding the metrics failed",
            );
        }
    };
    let mut response = Response::new(full(text));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    response
}

#[derive(Debug, thiserror::Error)]
#[error("cannot listen for metrics on {addr} (--metrics)")]
pub struct BindError {
    addr: SocketAddr,
    #[source]
    source: std::io::Error,
}

/// Binds `addr` now (so a bad address fails the start), or takes the
/// socket a takeover handed over for it, then serves in the background
/// (the socket kept for the next takeover while it serves).
pub async fn listen(
    addr: SocketAddr,
    sockets: &HandoverSockets,
    metrics: Arc<Metrics>,
    access: AccessPolicy,
) -> Result<SocketAddr, BindError> {
    let (listener, registration) = sockets
        .tcp_listener(addr, "--metrics")
        .await
        .map_err(|source| BindError { addr, source })?;
    let local = listener.local_addr().unwrap_or(addr);
    tokio::spawn(async move {
        let _handover = registration;
        serve(listener, metrics, Arc::new(access)).await;
    });
    Ok(local)
}

async fn serve(listener: TcpListener, metrics: Arc<Metrics>, access: Arc<AccessPolicy>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of descriptors and the like: wait a little, go on.
                tracing::warn!(%error, "accepting a metrics connection");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = Arc::clone(&metrics);
        let access = Arc::clone(&access);
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let (metrics, access) = (Arc::clone(&metrics), Arc::clone(&access));
                async move {
                    Ok::<_, std::convert::Infallible>(
                        answer(&request, peer, &metrics, &access).await,
                    )
                }
            });
            if let Err(error) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, %error, "metrics connection ended with an error");
            }
        });
    }
}

async fn answer(
    request: &Request<Incoming>,
    peer: SocketAddr,
    metrics: &Arc<Metrics>,
    access: &AccessPolicy,
) -> Response<Body> {
    if request.uri().path() != PATH {
        return text(StatusCode::NOT_FOUND, "only /metrics is served here");
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "use GET");
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match access.check(peer.ip(), request.headers()) {
        Ok(()) => response(metrics, request.headers()).await,
        Err(Refusal::Address(addr)) => {
            tracing::warn!(%addr, "metrics request refused");
            text(
                StatusCode::FORBIDDEN,
                &format!("metrics are not open to {addr} (see --admin-allow)"),
            )
        }
        Err(Refusal::Token) => {
            let mut response = text(
                StatusCode::UNAUTHORIZED,
                "metrics need `Authorization: Bearer <token>` (see --admin-token)",
            );
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            response
        }
    }
}
