//! Which elb node runs the discovery providers. With etcd as the store the
//! nodes elect one leader through etcd's v3 election API, on a lease that
//! this node keeps alive; with the embedded store the single node always
//! runs them. The outcome is a `watch::Receiver<bool>`: true only while this
//! node may run the providers.
//!
//! A leader stops believing it leads (the gate goes false) as soon as its
//! lease is in doubt: a keep-alive error, a lease etcd no longer knows, or
//! half the TTL without an answered keep-alive. etcd deletes the leader key
//! only a full TTL after the last keep-alive, so the gate is false before
//! another node can be elected. On shutdown the leader resigns, so another
//! node takes over at once instead of after the TTL.
use std::{
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use etcd_client::{Client, ConnectOptions, EventType, LeaderKey, ResignOptions, WatchOptions};
use serde::Serialize;
use tokio::{
    sync::watch,
    task::JoinHandle,
    time::{Instant, sleep, sleep_until, timeout},
};

use crate::store::{
    CommitGuard,
    etcd_access::{self, AccessError, EtcdAccessArgs, full_message},
};

/// The lease TTL when `--discovery-lease-ttl` is not given.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);

/// etcd extends shorter leases to about this anyway (1.5 election timeouts).
pub const MIN_LEASE_TTL: Duration = Duration::from_secs(2);

/// How long a single etcd request of the election may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// Back-off between campaigns after a failure: doubles up to the maximum.
const BACKOFF_FIRST: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// `--discovery-lease-ttl`: whole seconds (etcd's unit), at least 2 s.
pub fn parse_lease_ttl(text: &str) -> Result<Duration, String> {
    let ttl = crate::cli::parse_duration(text)?;
    if ttl.subsec_nanos() != 0 {
        return Err(format!(
            "{text:?}: the lease TTL is whole seconds (etcd's unit)"
        ));
    }
    if ttl < MIN_LEASE_TTL {
        return Err(format!(
            "{text:?}: the lease TTL must be at least {}s",
            MIN_LEASE_TTL.as_secs()
        ));
    }
    Ok(ttl)
}

/// The election for one ELB name: `/$ELBNAME:election/discovery`. Beside
/// the configuration's `/$ELBNAME/`, not in it: the configuration watch, the
/// local snapshot and the admin dump never see the candidates' keys. No ELB
/// name has a ':', so no other elb's keys start with it; an etcd role with
/// `--prefix /$ELBNAME` covers both.
pub fn election_name(elb_name: &str) -> String {
    format!("/{elb_name}:election/discovery")
}

/// This node as operators read it in the leader key's value:
/// `HOST pid PID ADDR`.
pub fn node_identity(listen: Option<std::net::SocketAddr>) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".to_owned());
    let pid = std::process::id();
    match listen {
        Some(addr) => format!("{host} pid {pid} {addr}"),
        None => format!("{host} pid {pid}"),
    }
}

/// What the election needs.
#[derive(Debug, Clone)]
pub struct ElectionSettings {
    /// `http://IP:PORT` or `https://IP:PORT`, as the store uses them.
    pub endpoints: Vec<String>,
    pub access: EtcdAccessArgs,
    /// See [`election_name`].
    pub name: String,
    /// See [`node_identity`].
    pub identity: String,
    pub lease_ttl: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ElectionError {
    #[error("etcd access for the discovery election")]
    Access(#[from] AccessError),
    #[error("etcd at {endpoints}: {what}")]
    Etcd {
        endpoints: String,
        what: &'static str,
        #[source]
        source: etcd_client::Error,
    },
    #[error("etcd at {endpoints}: {what}: no answer within {after:?}")]
    Timeout {
        endpoints: String,
        what: &'static str,
        after: Duration,
    },
    #[error("lease {lease:x} expired or was revoked")]
    LeaseGone { lease: i64 },
    #[error("no lease keep-alive answered for {0:?} (half the lease TTL)")]
    KeepAliveStale(Duration),
    #[error("etcd ended the lease keep-alive stream")]
    KeepAliveEnded,
    #[error("etcd granted a lease with a TTL of {0} s")]
    BadLease(i64),
    #[error("the campaign returned no leader key")]
    NoLeaderKey,
    #[error("the election's leader key is {leader}, not this node's {ours}")]
    NotOurKey { leader: String, ours: String },
    #[error("etcd ended the stream that follows the election")]
    ObserveEnded,
    #[error("the leader key {0} was deleted")]
    KeyDeleted(String),
}

/// The error and its causes on one line, for logs and reports.
fn describe(err: &ElectionError) -> String {
    match err {
        ElectionError::Etcd {
            endpoints,
            what,
            source,
        } => format!("etcd at {endpoints}: {what}: {}", full_message(source)),
        ElectionError::Access(source) => format!("{err}: {source}"),
        other => other.to_string(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Leader,
    Follower,
}

/// Who runs the discovery providers, for `GET /__erulb__/discovery/leader`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeaderReport {
    /// The leading node's identity as etcd has it (this node's with the
    /// embedded store); `None` while nobody leads or etcd cannot be read.
    pub leader: Option<String>,
    pub this_node: String,
    /// Whether this node may run the providers now.
    pub role: Role,
    /// `etcd`, or `none` with the embedded store.
    pub election: &'static str,
    /// This node's lease, while it has one.
    pub lease_id: Option<i64>,
    /// The TTL etcd granted (or that is configured, before a grant).
    pub lease_ttl_seconds: Option<u64>,
    /// Why the leader could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Reads who leads; cheap to clone.
#[derive(Clone)]
pub struct ElectionStatus {
    shared: Arc<Shared>,
    gate: watch::Receiver<bool>,
}

struct Shared {
    identity: String,
    /// `None` with the embedded store.
    etcd: Option<EtcdSide>,
}

struct EtcdSide {
    name: String,
    endpoints: String,
    ttl: Duration,
    /// The current session's client and lease, while there is one.
    session: Mutex<Option<SessionInfo>>,
    /// This node's leader key, while the gate is true.
    fence: Mutex<Option<CommitGuard>>,
}

#[derive(Clone)]
struct SessionInfo {
    client: Client,
    lease_id: i64,
    ttl_seconds: i64,
}

impl ElectionStatus {
    /// This node's role and the current leader (one etcd read).
    pub async fn report(&self) -> LeaderReport {
        let role = if *self.gate.borrow() {
            Role::Leader
        } else {
            Role::Follower
        };
        let this_node = self.shared.identity.clone();
        let Some(etcd) = &self.shared.etcd else {
            return LeaderReport {
                leader: Some(this_node.clone()),
                this_node,
                role,
                election: "none",
                lease_id: None,
                lease_ttl_seconds: None,
                error: None,
            };
        };
        let session = etcd
            .session
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut report = LeaderReport {
            leader: None,
            this_node,
            role,
            election: "etcd",
            lease_id: session.as_ref().map(|s| s.lease_id),
            lease_ttl_seconds: Some(
                session
                    .as_ref()
                    .and_then(|s| u64::try_from(s.ttl_seconds).ok())
                    .unwrap_or(etcd.ttl.as_secs()),
            ),
            error: None,
        };
        let Some(session) = session else {
            report.error = Some(format!("not in touch with etcd at {}", etcd.endpoints));
            return report;
        };
        let mut election = session.client.election_client();
        match timeout(REQUEST_TIMEOUT, election.leader(etcd.name.as_str())).await {
            Ok(Ok(response)) => {
                report.leader = response
                    .kv()
                    .map(|kv| String::from_utf8_lossy(kv.value()).into_owned());
            }
            // etcd's answer when no key is in the election.
            Ok(Err(err)) if full_message(&err).contains("no leader") => {}
            Ok(Err(err)) => report.error = Some(full_message(&err)),
            Err(_) => {
                report.error = Some(format!("etcd did not answer within {REQUEST_TIMEOUT:?}"));
            }
        }
        report
    }
}

/// The leader's condition for its discovery commits: its leader key, as
/// long as it leads. A commit made on it does not land once the key is gone
/// (resigned, deleted, or expired with the lease), so a node that lost the
/// election cannot overwrite what the new leader wrote. Cheap to clone.
#[derive(Clone)]
pub struct Fence {
    shared: Arc<Shared>,
}

impl Fence {
    /// The guard for a commit now; `None` while this node does not lead
    /// (write nothing then).
    pub fn current(&self) -> Option<CommitGuard> {
        let etcd = self.shared.etcd.as_ref()?;
        etcd.fence
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// The running election: its task, the gate, and its status.
pub struct DiscoveryGate {
    /// Ends after shutdown, once this node resigned.
    pub task: JoinHandle<()>,
    /// True only while this node may run the discovery providers.
    pub may_run: watch::Receiver<bool>,
    pub status: ElectionStatus,
    /// With etcd: what the providers' commits are conditional on; `None`
    /// with the embedded store (one node, nothing to fence).
    pub fence: Option<Fence>,
}

impl DiscoveryGate {
    /// The embedded store: no election, this node runs the providers until
    /// `shutdown` (then the gate goes false).
    pub fn standalone(identity: String, mut shutdown: watch::Receiver<bool>) -> Self {
        let (gate_tx, gate) = watch::channel(true);
        let status = ElectionStatus {
            shared: Arc::new(Shared {
                identity,
                etcd: None,
            }),
            gate: gate.clone(),
        };
        let task = tokio::spawn(async move {
            // An error means the sender is gone: shutting down as well.
            let _ = shutdown.wait_for(|stop| *stop).await;
            gate_tx.send_replace(false);
        });
        Self {
            task,
            may_run: gate,
            status,
            fence: None,
        }
    }

    /// Joins the election in the background; checks the access files now.
    pub fn elect(
        settings: ElectionSettings,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Self, ElectionError> {
        etcd_access::apply(&settings.access, ConnectOptions::new())?;
        let (gate_tx, gate) = watch::channel(false);
        let shared = Arc::new(Shared {
            identity: settings.identity.clone(),
            etcd: Some(EtcdSide {
                name: settings.name.clone(),
                endpoints: settings.endpoints.join(","),
                ttl: settings.lease_ttl,
                session: Mutex::new(None),
                fence: Mutex::new(None),
            }),
        });
        let status = ElectionStatus {
            shared: Arc::clone(&shared),
            gate: gate.clone(),
        };
        let fence = Fence {
            shared: Arc::clone(&shared),
        };
        let candidate = Candidate {
            endpoints: settings.endpoints.join(","),
            settings,
            shared,
            gate: gate_tx,
            stale_leases: Vec::new(),
        };
        let task = tokio::spawn(candidate.run(shutdown));
        Ok(Self {
            task,
            may_run: gate,
            status,
            fence: Some(fence),
        })
    }
}

/// How a session ended.
enum End {
    Shutdown,
    Lost(ElectionError),
}

/// What a session leaves to tidy up once the gate is false.
#[derive(Default)]
struct Held {
    client: Option<Client>,
    lease: Option<i64>,
    leader_key: Option<LeaderKey>,
}

struct Candidate {
    settings: ElectionSettings,
    endpoints: String,
    shared: Arc<Shared>,
    gate: watch::Sender<bool>,
    /// Leases a failed session could not revoke: revoked when etcd answers
    /// again, so their keys do not hold the election up for a TTL.
    stale_leases: Vec<i64>,
}

impl Candidate {
    async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        tracing::info!(
            election = self.settings.name,
            identity = self.settings.identity,
            lease_ttl = ?self.settings.lease_ttl,
            "campaigning for discovery leadership (etcd election)"
        );
        let mut backoff = BACKOFF_FIRST;
        // While etcd stays unreachable, the same failure is logged once.
        let mut last_failure = String::new();
        loop {
            if *shutdown.borrow() {
                break;
            }
            let started = Instant::now();
            let mut held = Held::default();
            let end = self.session(&mut held, &mut shutdown).await;
            // Stop believing first (no new commit, then the providers
            // stop), then tidy up.
            self.set_fence(None);
            let was_leader = self.gate.send_replace(false);
            self.set_session(None);
            match end {
                End::Shutdown => {
                    self.resign(held, was_leader).await;
                    break;
                }
                End::Lost(err) => {
                    let why = describe(&err);
                    if was_leader {
                        tracing::warn!("lost discovery leadership: {why}");
                    } else if why != last_failure {
                        tracing::warn!("discovery election: {why}");
                    } else {
                        tracing::debug!("discovery election: {why}");
                    }
                    last_failure = why;
                    self.abandon(held).await;
                }
            }
            // A session that held for a while earns a fresh back-off.
            if started.elapsed() > self.settings.lease_ttl {
                backoff = BACKOFF_FIRST;
                last_failure.clear();
            }
            tracing::debug!(retry_in = ?backoff, "campaigning for discovery leadership again");
            tokio::select! {
                () = sleep(backoff) => {}
                _ = shutdown.wait_for(|stop| *stop) => break,
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
        tracing::info!("discovery election stopped");
    }

    fn set_fence(&self, fence: Option<CommitGuard>) {
        if let Some(etcd) = &self.shared.etcd {
            *etcd.fence.lock().unwrap_or_else(PoisonError::into_inner) = fence;
        }
    }

    fn set_session(&self, session: Option<SessionInfo>) {
        if let Some(etcd) = &self.shared.etcd {
            *etcd.session.lock().unwrap_or_else(PoisonError::into_inner) = session;
        }
    }

    fn etcd_error(&self, what: &'static str) -> impl FnOnce(etcd_client::Error) -> ElectionError {
        let endpoints = self.endpoints.clone();
        move |source| ElectionError::Etcd {
            endpoints,
            what,
            source,
        }
    }

    fn timeout_error(&self, what: &'static str, after: Duration) -> ElectionError {
        ElectionError::Timeout {
            endpoints: self.endpoints.clone(),
            what,
            after,
        }
    }

    /// One etcd request, bounded by [`REQUEST_TIMEOUT`].
    async fn request<T>(
        &self,
        what: &'static str,
        call: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, ElectionError> {
        match timeout(REQUEST_TIMEOUT, call).await {
            Ok(result) => result.map_err(self.etcd_error(what)),
            Err(_) => Err(self.timeout_error(what, REQUEST_TIMEOUT)),
        }
    }

    async fn connect(&self) -> Result<Client, ElectionError> {
        // No overall request timeout: a campaign waits as long as another
        // node leads. HTTP/2 pings notice a dead connection instead.
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_keep_alive(Duration::from_secs(1), Duration::from_secs(2))
            .with_keep_alive_while_idle(true)
            .with_require_leader(true);
        let options = etcd_access::apply(&self.settings.access, options)?;
        self.request(
            "connecting for the discovery election",
            Client::connect(&self.settings.endpoints, Some(options)),
        )
        .await
    }

    /// Connects, takes a lease, campaigns and, once elected, leads until
    /// the lease is in doubt or shutdown.
    async fn session(&mut self, held: &mut Held, shutdown: &mut watch::Receiver<bool>) -> End {
        match self.try_session(held, shutdown).await {
            Ok(()) => End::Shutdown,
            Err(err) => End::Lost(err),
        }
    }

    async fn try_session(
        &mut self,
        held: &mut Held,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), ElectionError> {
        let client = self.connect().await?;
        held.client = Some(client.clone());
        self.revoke_stale(&client).await;
        let mut leases = client.lease_client();
        let granted_at = Instant::now();
        let ttl_seconds = i64::try_from(self.settings.lease_ttl.as_secs()).unwrap_or(i64::MAX);
        let grant = self
            .request(
                "granting the election lease",
                leases.grant(ttl_seconds, None),
            )
            .await?;
        let lease = grant.id();
        held.lease = Some(lease);
        let granted_ttl = grant.ttl();
        let ttl = u64::try_from(granted_ttl)
            .ok()
            .filter(|s| *s > 0)
            .map(Duration::from_secs)
            .ok_or(ElectionError::BadLease(granted_ttl))?;
        // Believe the lease for half its TTL past the last keep-alive *sent*
        // (etcd renewed it at or after that moment).
        let window = ttl / 2;
        let (keeper, stream) = self
            .request("starting the lease keep-alive", leases.keep_alive(lease))
            .await?;
        let (believe_tx, mut believe) = watch::channel(granted_at + window);
        let keep = keep_alive(
            keeper,
            stream,
            lease,
            ttl / 5,
            window,
            believe_tx,
            self.endpoints.clone(),
        );
        tokio::pin!(keep);
        self.set_session(Some(SessionInfo {
            client: client.clone(),
            lease_id: lease,
            ttl_seconds: granted_ttl,
        }));
        tracing::debug!(lease = format!("{lease:x}"), ?ttl, "election lease granted");

        // Candidate: the campaign answers once this node's key is the oldest.
        let mut election = client.election_client();
        let name = self.settings.name.as_str();
        let mut response = {
            let campaign = election.campaign(name, self.settings.identity.as_str(), lease);
            tokio::pin!(campaign);
            loop {
                let deadline = *believe.borrow();
                tokio::select! {
                    biased;
                    _ = shutdown.wait_for(|stop| *stop) => return Ok(()),
                    err = &mut keep => return Err(err),
                    () = sleep_until(deadline) => return Err(ElectionError::KeepAliveStale(window)),
                    _ = believe.changed() => {}
                    result = &mut campaign => break result.map_err(self.etcd_error("campaigning"))?,
                }
            }
        };
        let leader_key = response.take_leader().ok_or(ElectionError::NoLeaderKey)?;
        let ours = String::from_utf8_lossy(leader_key.key()).into_owned();
        let fence = CommitGuard {
            key: ours.clone(),
            create_revision: leader_key.rev(),
        };
        // A deleted key (an operator's `etcdctl del`) ends leadership even
        // while no other candidate is elected in its place.
        let mut own_key = {
            let mut client = client.clone();
            let options = WatchOptions::new().with_start_revision(leader_key.rev() + 1);
            self.request(
                "watching the leader key",
                client.watch(leader_key.key(), Some(options)),
            )
            .await?
        };
        held.leader_key = Some(leader_key);

        // Confirm through etcd that the key leads, and follow any change.
        let mut observe = self
            .request("observing the election", election.observe(name))
            .await?;
        let first = self
            .request("reading the election's leader", observe.message())
            .await?
            .ok_or(ElectionError::ObserveEnded)?;
        check_leader(&first, &ours)?;
        if Instant::now() >= *believe.borrow() {
            return Err(ElectionError::KeepAliveStale(window));
        }
        self.set_fence(Some(fence));
        self.gate.send_replace(true);
        tracing::info!(
            identity = self.settings.identity,
            key = ours,
            "became discovery leader"
        );
        loop {
            let deadline = *believe.borrow();
            tokio::select! {
                biased;
                _ = shutdown.wait_for(|stop| *stop) => return Ok(()),
                err = &mut keep => return Err(err),
                () = sleep_until(deadline) => return Err(ElectionError::KeepAliveStale(window)),
                _ = believe.changed() => {}
                message = observe.message() => {
                    let message = message
                        .map_err(self.etcd_error("observing the election"))?
                        .ok_or(ElectionError::ObserveEnded)?;
                    check_leader(&message, &ours)?;
                }
                message = own_key.message() => {
                    let message = message
                        .map_err(self.etcd_error("watching the leader key"))?
                        .ok_or(ElectionError::ObserveEnded)?;
                    if message.canceled()
                        || message.events().iter().any(|e| e.event_type() == EventType::Delete)
                    {
                        return Err(ElectionError::KeyDeleted(ours));
                    }
                }
            }
        }
    }

    /// After shutdown: resign (another node is elected at once) and
    /// revoke the lease.
    async fn resign(&mut self, held: Held, was_leader: bool) {
        let Some(client) = held.client else {
            return;
        };
        if let Some(leader_key) = held.leader_key {
            let mut election = client.election_client();
            let resign = election.resign(Some(ResignOptions::new().with_leader(leader_key)));
            match self.request("resigning", resign).await {
                Ok(_) if was_leader => tracing::info!("resigned discovery leadership"),
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!("cannot resign discovery leadership: {}", describe(&err))
                }
            }
        }
        if let Some(lease) = held.lease {
            self.revoke(&client, lease).await;
        }
    }

    /// After a lost session: revoke its lease so that its key does not hold
    /// the election up; if etcd cannot be reached, try again next session.
    async fn abandon(&mut self, held: Held) {
        if let (Some(client), Some(lease)) = (held.client, held.lease) {
            self.revoke(&client, lease).await;
        }
    }

    async fn revoke(&mut self, client: &Client, lease: i64) {
        let mut leases = client.lease_client();
        match timeout(Duration::from_secs(1), leases.revoke(lease)).await {
            Ok(Ok(_)) => {}
            // Already expired: nothing holds the election up.
            Ok(Err(err)) if full_message(&err).contains("lease not found") => {}
            _ => self.stale_leases.push(lease),
        }
    }

    async fn revoke_stale(&mut self, client: &Client) {
        let stale = std::mem::take(&mut self.stale_leases);
        for lease in stale {
            self.revoke(client, lease).await;
        }
    }
}

/// Fails unless `message` names `ours` as the leader key.
fn check_leader(message: &etcd_client::LeaderResponse, ours: &str) -> Result<(), ElectionError> {
    let leader = message
        .kv()
        .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
        .unwrap_or_default();
    if leader == ours {
        Ok(())
    } else {
        Err(ElectionError::NotOurKey {
            leader,
            ours: ours.to_owned(),
        })
    }
}

/// Renews `lease` every `interval`, moving `believe` to half the TTL past
/// each answered keep-alive; returns why it stopped.
async fn keep_alive(
    mut keeper: etcd_client::LeaseKeeper,
    mut stream: etcd_client::LeaseKeepAliveStream,
    lease: i64,
    interval: Duration,
    window: Duration,
    believe: watch::Sender<Instant>,
    endpoints: String,
) -> ElectionError {
    let interval = interval.max(Duration::from_millis(200));
    let failed = |what, source| ElectionError::Etcd {
        endpoints: endpoints.clone(),
        what,
        source,
    };
    loop {
        let sent = Instant::now();
        if let Err(err) = keeper.keep_alive().await {
            return failed("sending a lease keep-alive", err);
        }
        // One keep-alive in flight at a time: an answer belongs to `sent`.
        match timeout(window, stream.message()).await {
            Err(_) => return ElectionError::KeepAliveStale(window),
            Ok(Err(err)) => return failed("renewing the election lease", err),
            Ok(Ok(None)) => return ElectionError::KeepAliveEnded,
            Ok(Ok(Some(answer))) if answer.ttl() <= 0 => {
                return ElectionError::LeaseGone { lease };
            }
            Ok(Ok(Some(_))) => {
                believe.send_replace(sent + window);
            }
        }
        sleep_until(sent + interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_ttl_is_whole_seconds_of_at_least_two() {
        assert_eq!(parse_lease_ttl("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_lease_ttl("3"), Ok(Duration::from_secs(3)));
        assert!(parse_lease_ttl("1s").is_err_and(|e| e.contains("at least 2s")));
        assert!(parse_lease_ttl("2500ms").is_err_and(|e| e.contains("whole seconds")));
        assert!(parse_lease_ttl("soon").is_err());
    }

    #[test]
    fn names_and_identity() {
        assert_eq!(election_name("ELB"), "/ELB:election/discovery");
        let addr = "127.0.0.1:8080".parse().expect("addr");
        let identity = node_identity(Some(addr));
        assert!(
            identity.ends_with(&format!("pid {} 127.0.0.1:8080", std::process::id())),
            "{identity}"
        );
    }

    #[tokio::test]
    async fn the_embedded_store_always_runs_the_providers() {
        let (stop_tx, stop) = watch::channel(false);
        let gate = DiscoveryGate::standalone("me".into(), stop);
        assert!(*gate.may_run.borrow());
        let report = gate.status.report().await;
        assert_eq!(report.role, Role::Leader);
        assert_eq!(report.leader.as_deref(), Some("me"));
        assert_eq!(report.election, "none");
        stop_tx.send_replace(true);
        gate.task.await.expect("task");
        assert!(!*gate.may_run.borrow());
    }
}
