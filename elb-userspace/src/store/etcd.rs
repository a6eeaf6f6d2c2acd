//! etcd v3 as the configuration store.
use std::time::Duration;

use etcd_client::{
    Client, ConnectOptions, DeleteOptions, GetOptions, Txn, TxnOp, WatchOptions, WatchStream,
};

use super::{Kv, KvOp, StoreError};

/// Parses `ETCD`: `IP:PORT`, `http://IP:PORT`, or a comma-separated list.
pub fn parse_endpoints(text: &str) -> Result<Vec<String>, String> {
    let endpoints: Vec<String> = text
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|endpoint| {
            let host_port = endpoint.strip_prefix("http://").unwrap_or(endpoint);
            if endpoint.starts_with("https://") {
                return Err(format!(
                    "etcd endpoint {endpoint:?}: TLS is not supported, use http://"
                ));
            }
            if host_port.contains('/') || host_port.contains("://") {
                return Err(format!(
                    "etcd endpoint {endpoint:?} is not IP:PORT or http://IP:PORT"
                ));
            }
            let port = host_port
                .rsplit_once(':')
                .map(|(_, port)| port)
                .ok_or_else(|| format!("etcd endpoint {endpoint:?} has no :PORT"))?;
            port.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("etcd endpoint {endpoint:?} has an invalid port"))?;
            Ok(format!("http://{host_port}"))
        })
        .collect::<Result<_, _>>()?;
    if endpoints.is_empty() {
        return Err("no etcd endpoint given".into());
    }
    Ok(endpoints)
}

#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    endpoints: String,
    endpoint_count: usize,
    prefix: String,
}

/// The client balances requests over the endpoints; one that is down fails
/// the request routed to it at connect time, before anything reached etcd,
/// so it is safe to send that request again (to the next endpoint).
fn never_reached_etcd(err: &etcd_client::Error) -> bool {
    err.to_string().contains("connect error")
}

impl EtcdStore {
    /// Connects lazily: an etcd that is down now is retried on every call.
    pub async fn connect(endpoints: &[String], prefix: &str) -> Result<Self, StoreError> {
        let joined = endpoints.join(",");
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(Duration::from_secs(5))
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3));
        let client = Client::connect(endpoints, Some(options))
            .await
            .map_err(|e| StoreError::Etcd {
                endpoints: joined.clone(),
                message: e.to_string(),
            })?;
        Ok(Self {
            client,
            endpoints: joined,
            endpoint_count: endpoints.len(),
            prefix: prefix.to_owned(),
        })
    }

    pub fn endpoints(&self) -> &str {
        &self.endpoints
    }

    /// Runs `call`, again on connect failures. The client's balancer may
    /// route a retry to the same dead endpoint, so a few tries per endpoint
    /// are allowed (each one is safe: nothing reached etcd).
    async fn call<T, F, Fut>(&self, mut call: F) -> Result<T, StoreError>
    where
        F: FnMut(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let mut attempts = 0;
        loop {
            attempts += 1;
            match call(self.client.clone()).await {
                Err(err) if never_reached_etcd(&err) && attempts < 3 * self.endpoint_count => {
                    tracing::debug!(error = %err, "etcd endpoint unreachable, trying the next");
                }
                result => return result.map_err(|e| self.error(e)),
            }
        }
    }

    fn error(&self, message: impl std::fmt::Display) -> StoreError {
        StoreError::Etcd {
            endpoints: self.endpoints.clone(),
            message: message.to_string(),
        }
    }

    /// Everything under the prefix, and the revision it was read at.
    pub async fn load(&self) -> Result<(Kv, i64), StoreError> {
        let prefix = self.prefix.as_str();
        let response = self
            .call(|mut client| async move {
                client
                    .get(prefix, Some(GetOptions::new().with_prefix()))
                    .await
            })
            .await?;
        let revision = response.header().map_or(0, |h| h.revision());
        let mut kv = Kv::new();
        for item in response.kvs() {
            match (item.key_str(), item.value_str()) {
                (Ok(key), Ok(value)) => {
                    kv.insert(key.to_owned(), value.to_owned());
                }
                _ => tracing::warn!(
                    key = %String::from_utf8_lossy(item.key()),
                    "skipping an etcd key or value that is not UTF-8"
                ),
            }
        }
        Ok((kv, revision))
    }

    pub async fn commit(&self, ops: &[KvOp]) -> Result<i64, StoreError> {
        let txn_ops: Vec<TxnOp> = ops
            .iter()
            .map(|op| match op {
                KvOp::Put { key, value } => TxnOp::put(key.as_str(), value.as_str(), None),
                KvOp::Delete { key } => TxnOp::delete(key.as_str(), None),
                KvOp::DeletePrefix { prefix } => {
                    TxnOp::delete(prefix.as_str(), Some(DeleteOptions::new().with_prefix()))
                }
            })
            .collect();
        let response = self
            .call(|mut client| {
                let txn = Txn::new().and_then(txn_ops.clone());
                async move { client.txn(txn).await }
            })
            .await
            .map_err(|e| match e {
                StoreError::Etcd { endpoints, message }
                    if message.contains("too many operations") =>
                {
                    StoreError::Etcd {
                        endpoints,
                        message: format!(
                            "{message} ({} operations; raise etcd's --max-txn-ops)",
                            ops.len()
                        ),
                    }
                }
                other => other,
            })?;
        Ok(response.header().map_or(0, |h| h.revision()))
    }

    /// Watches the prefix from `start_revision` (inclusive).
    pub async fn watch(&self, start_revision: i64) -> Result<WatchStream, StoreError> {
        let prefix = self.prefix.as_str();
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(start_revision)
            .with_progress_notify();
        self.call(|mut client| {
            let options = options.clone();
            async move { client.watch(prefix, Some(options)).await }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_accept_the_eru_forms() {
        assert_eq!(
            parse_endpoints("127.0.0.1:2379").expect("plain"),
            ["http://127.0.0.1:2379"]
        );
        assert_eq!(
            parse_endpoints("http://10.0.0.1:2379, 10.0.0.2:2379").expect("list"),
            ["http://10.0.0.1:2379", "http://10.0.0.2:2379"]
        );
    }

    #[test]
    fn bad_endpoints_are_named() {
        for (bad, needle) in [
            ("", "no etcd endpoint"),
            ("127.0.0.1", "no :PORT"),
            ("127.0.0.1:99999", "invalid port"),
            ("https://a:1", "TLS is not supported"),
            ("http://a:1/x", "not IP:PORT"),
        ] {
            let err = parse_endpoints(bad).expect_err(bad);
            assert!(err.contains(needle), "{bad}: {err}");
        }
    }
}
