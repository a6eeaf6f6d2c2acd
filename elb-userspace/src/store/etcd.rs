//! etcd v3 as the configuration store.
use std::{sync::Arc, time::Duration};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, Txn, TxnOp,
    WatchOptions, WatchStream,
};

use super::{
    CommitGuard, Kv, KvOp, StoreError,
    etcd_access::{self, EtcdAccessArgs, full_message, refusal},
};

/// Parses `ETCD`: `IP:PORT`, `http://IP:PORT`, or a comma-separated list;
/// with `tls` (--etcd-ca), `https://IP:PORT` and bare `IP:PORT` use TLS.
pub fn parse_endpoints(text: &str, tls: bool) -> Result<Vec<String>, String> {
    let scheme = if tls { "https://" } else { "http://" };
    let endpoints: Vec<String> = text
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|endpoint| {
            let host_port = endpoint
                .strip_prefix(scheme)
                .unwrap_or(endpoint);
            if !tls && endpoint.starts_with("https://") {
                return Err(format!(
                    "etcd endpoint {endpoint:?}: https:// needs --etcd-ca (the CA etcd's certificate chains to)"
                ));
            }
            if tls && endpoint.starts_with("http://") {
                return Err(format!(
                    "etcd endpoint {endpoint:?}: with --etcd-ca, etcd is reached over TLS: use https:// or IP:PORT"
                ));
            }
            if host_port.contains('/') || host_port.contains("://") {
                return Err(format!(
                    "etcd endpoint {endpoint:?} is not IP:PORT or {scheme}IP:PORT"
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
            Ok(format!("{scheme}{host_port}"))
        })
        .collect::<Result<_, _>>()?;
    if endpoints.is_empty() {
        return Err("no etcd endpoint given".into());
    }
    Ok(endpoints)
}

#[derive(Clone)]
pub struct EtcdStore {
    shared: Arc<Shared>,
}

struct Shared {
    endpoint_list: Vec<String>,
    endpoints: String,
    prefix: String,
    access: EtcdAccessArgs,
    /// `None` until the first call and after a failure: the next call
    /// connects again, re-reading the TLS and password files.
    client: tokio::sync::Mutex<Option<Client>>,
    /// Set by the watch loop (`crate::sync`), read by the status page.
    link: super::link::StoreLink,
}

/// The client balances requests over the endpoints; one that is down fails
/// the request routed to it at connect time, before anything reached etcd,
/// so it is safe to send that request again (to the next endpoint).
fn never_reached_etcd(err: &etcd_client::Error) -> bool {
    err.to_string().contains("connect error") && refusal(err).is_none()
}

impl EtcdStore {
    /// Checks the access files; connects on first use, so an etcd that is
    /// down now is retried on every call.
    pub async fn connect(
        endpoints: &[String],
        prefix: &str,
        access: &EtcdAccessArgs,
    ) -> Result<Self, StoreError> {
        let joined = endpoints.join(",");
        etcd_access::apply(access, ConnectOptions::new()).map_err(|e| StoreError::EtcdAccess {
            endpoints: joined.clone(),
            message: e.to_string(),
        })?;
        Ok(Self {
            shared: Arc::new(Shared {
                endpoint_list: endpoints.to_vec(),
                endpoints: joined,
                prefix: prefix.to_owned(),
                access: access.clone(),
                client: tokio::sync::Mutex::new(None),
                link: super::link::StoreLink::new(false),
            }),
        })
    }

    /// The current client, connecting (and authenticating) if there is none.
    async fn client(&self) -> Result<Client, StoreError> {
        let mut slot = self.shared.client.lock().await;
        if let Some(client) = slot.as_ref() {
            return Ok(client.clone());
        }
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(Duration::from_secs(5))
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3));
        let options = etcd_access::apply(&self.shared.access, options).map_err(|e| {
            StoreError::EtcdAccess {
                endpoints: self.shared.endpoints.clone(),
                message: e.to_string(),
            }
        })?;
        let client = Client::connect(&self.shared.endpoint_list, Some(options))
            .await
            .map_err(|e| self.error(e))?;
        *slot = Some(client.clone());
        Ok(client)
    }

    /// Drops the client after a failure: the next call reconnects with the
    /// files as they are then (rotated certificates, a new password).
    pub async fn reconnect_next_time(&self) {
        *self.shared.client.lock().await = None;
    }

    /// Whether the last exchange with etcd worked.
    pub fn link(&self) -> &super::link::StoreLink {
        &self.shared.link
    }

    pub fn endpoints(&self) -> &str {
        &self.shared.endpoints
    }

    /// Runs `call`, again on connect failures. The client's balancer may
    /// route a retry to the same dead endpoint, so a few tries per endpoint
    /// are allowed (each one is safe: nothing reached etcd). After a failure
    /// the next call reconnects.
    async fn call<T, F, Fut>(&self, mut call: F) -> Result<T, StoreError>
    where
        F: FnMut(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let mut attempts = 0;
        let result = loop {
            attempts += 1;
            let retry = attempts < 3 * self.shared.endpoint_list.len();
            let client = match self.client().await {
                Ok(client) => client,
                // Connecting authenticates too, through a balancer that may
                // pick a dead endpoint.
                Err(err @ StoreError::Etcd { .. }) if retry => {
                    tracing::debug!(error = %err, "connecting to etcd failed, trying again");
                    continue;
                }
                Err(err) => break Err(err),
            };
            match call(client).await {
                Err(err) if never_reached_etcd(&err) && retry => {
                    tracing::debug!(error = %err, "etcd endpoint unreachable, trying the next");
                }
                result => break result.map_err(|e| self.error(e)),
            }
        };
        if result.is_err() {
            self.reconnect_next_time().await;
        }
        result
    }

    /// An etcd error, classified: a refusal (credentials, TLS trust) says
    /// what to check.
    fn error(&self, err: etcd_client::Error) -> StoreError {
        let endpoints = self.shared.endpoints.clone();
        match refusal(&err) {
            Some(hint) => StoreError::EtcdAccess {
                endpoints,
                message: format!("{hint}: {}", full_message(&err)),
            },
            None => StoreError::Etcd {
                endpoints,
                message: full_message(&err),
            },
        }
    }

    /// Everything under the prefix, and the revision it was read at.
    pub async fn load(&self) -> Result<(Kv, i64), StoreError> {
        let prefix = self.shared.prefix.as_str();
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
        self.commit_if(ops, None).await
    }

    /// [`EtcdStore::commit`] in a transaction that first compares `guard`'s
    /// key's create revision: a deleted (or re-created) key fails it.
    pub async fn commit_guarded(
        &self,
        ops: &[KvOp],
        guard: &CommitGuard,
    ) -> Result<i64, StoreError> {
        self.commit_if(ops, Some(guard)).await
    }

    async fn commit_if(
        &self,
        ops: &[KvOp],
        guard: Option<&CommitGuard>,
    ) -> Result<i64, StoreError> {
        let compare: Vec<Compare> = guard
            .map(|guard| {
                Compare::create_revision(
                    guard.key.as_str(),
                    CompareOp::Equal,
                    guard.create_revision,
                )
            })
            .into_iter()
            .collect();
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
                let txn = Txn::new().when(compare.clone()).and_then(txn_ops.clone());
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
        if let Some(guard) = guard
            && !response.succeeded()
        {
            return Err(StoreError::Fenced {
                endpoints: self.shared.endpoints.clone(),
                key: guard.key.clone(),
                create_revision: guard.create_revision,
            });
        }
        Ok(response.header().map_or(0, |h| h.revision()))
    }

    /// Watches the prefix from `start_revision` (inclusive).
    pub async fn watch(&self, start_revision: i64) -> Result<WatchStream, StoreError> {
        let prefix = self.shared.prefix.as_str();
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
            parse_endpoints("127.0.0.1:2379", false).expect("plain"),
            ["http://127.0.0.1:2379"]
        );
        assert_eq!(
            parse_endpoints("http://10.0.0.1:2379, 10.0.0.2:2379", false).expect("list"),
            ["http://10.0.0.1:2379", "http://10.0.0.2:2379"]
        );
        assert_eq!(
            parse_endpoints("https://10.0.0.1:2379, 10.0.0.2:2379", true).expect("tls"),
            ["https://10.0.0.1:2379", "https://10.0.0.2:2379"]
        );
    }

    #[test]
    fn bad_endpoints_are_named() {
        for (bad, tls, needle) in [
            ("", false, "no etcd endpoint"),
            ("127.0.0.1", false, "no :PORT"),
            ("127.0.0.1:99999", false, "invalid port"),
            ("https://a:1", false, "needs --etcd-ca"),
            ("http://a:1", true, "use https://"),
            ("http://a:1/x", false, "not IP:PORT"),
        ] {
            let err = parse_endpoints(bad, tls).expect_err(bad);
            assert!(err.contains(needle), "{bad}: {err}");
        }
    }
}
