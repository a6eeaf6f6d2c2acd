//! `Upgrade` requests (WebSocket and the like): the handshake is proxied on
//! a dedicated upstream connection, and after `101 Switching Protocols` the
//! two connections are spliced byte for byte.
use http::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use super::{Proxy, headers::strip_hop_by_hop, pool::ConnectError};
use crate::{
    http_util::{Body, text},
    limits::ClientSlot,
    server::ListenerStop,
};
use http_body_util::BodyExt;

pub async fn forward(
    proxy: &Proxy,
    servers: &[(String, bool)],
    mut request: Request<Body>,
) -> Response<Body> {
    // An upgrade is an HTTP/1.1 handshake, over TLS for a `tls` server
    // (also one with `h2`).
    let Some((server, tls)) = servers.first() else {
        return text(StatusCode::BAD_GATEWAY, "no live upstream server");
    };
    let settings = &proxy.settings;
    // The tunnel holds both connections' slots (see ClientSlot).
    let client_slot = request.extensions_mut().remove::<ClientSlot>();
    let listener_stop = request.extensions_mut().remove::<ListenerStop>();
    let (mut sender, upstream_slot) = match proxy
        .pool
        .open(server, *tls, settings.connect_timeout, true)
        .await
    {
        Ok(opened) => opened,
        Err(err @ ConnectError::AtLimit { .. }) => {
            tracing::debug!(server, error = %err, "upgrade: no upstream connection slot");
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                "the upstream servers are at elb's connection limit",
            );
        }
        Err(err) => {
            tracing::warn!(server, error = %err, "upgrade: cannot reach the upstream");
            return text(StatusCode::BAD_GATEWAY, "the upstream failed");
        }
    };
    // hyper keeps the client connection's upgrade handle in the request.
    let client_upgrade = hyper::upgrade::on(&mut request);
    let response =
        match tokio::time::timeout(settings.response_timeout, sender.send_request(request)).await {
            Ok(Ok(response)) => response,
            Ok(Err(err)) => {
                tracing::warn!(server, error = %err, "upgrade: upstream failed");
                return text(StatusCode::BAD_GATEWAY, "the upstream failed");
            }
            Err(_) => return text(StatusCode::GATEWAY_TIMEOUT, "the upstream timed out"),
        };
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers, None);
        return Response::from_parts(parts, body.map_err(Into::into).boxed());
    }
    let (mut parts, body) = response.into_parts();
    let mut upstream_response = Response::from_parts(parts.clone(), body);
    let upstream_upgrade = hyper::upgrade::on(&mut upstream_response);
    let server = server.clone();
    tokio::spawn(async move {
        let _slots = (client_slot, upstream_slot);
        match tokio::try_join!(client_upgrade, upstream_upgrade) {
            Ok((client, upstream)) => {
                let mut client = TokioIo::new(client);
                let mut upstream = TokioIo::new(upstream);
                let spliced = tokio::io::copy_bidirectional(&mut client, &mut upstream);
                let removed = async {
                    match listener_stop {
                        Some(stop) => stop.drained().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    ended = spliced => if let Err(err) = ended {
                        tracing::debug!(server, error = %err, "upgraded connection ended");
                    },
                    () = removed => {
                        tracing::debug!(server, "upgraded connection closed: its listener was removed");
                    }
                }
            }
            Err(err) => tracing::warn!(server, error = %err, "upgrade failed"),
        }
    });
    // Keep Connection/Upgrade: the client needs them to complete the switch.
    parts.headers.remove(http::header::TRANSFER_ENCODING);
    Response::from_parts(parts, crate::http_util::empty())
}
