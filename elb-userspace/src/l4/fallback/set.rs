//! The set of services being served: brought to each new configuration
//! snapshot by starting, stopping, re-binding and re-planning services.
use std::{collections::BTreeMap, net::SocketAddr, sync::Arc};

use tokio::{sync::watch, task::JoinHandle};

use super::{
    Context, FallbackError,
    deny::DenyList,
    service::{ListenState, ServiceRuntime},
    tcp, udp,
};
use crate::{
    cidr::Cidr,
    config::{L4Proto, L4Service, Snapshot},
    l4::plan::PlanInputs,
    takeover::{Registration, SocketKind, SocketTag},
};

/// What one snapshot asks of one service name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Start,
    Stop,
    /// The VIP or protocol changed: stop, then start on the new one.
    Rebind,
    /// Same VIP and protocol: the route is rebuilt if its inputs changed.
    Keep,
}

/// Compares what runs (`name → (vip, proto)`) with what is wanted. Stops
/// and re-binds come before starts, so a VIP passed from one service to
/// another is free when the new one binds it.
pub fn changes(
    running: &BTreeMap<String, (SocketAddr, L4Proto)>,
    wanted: &BTreeMap<String, Arc<L4Service>>,
) -> Vec<(String, Change)> {
    let mut out = Vec::new();
    for (name, (vip, proto)) in running {
        match wanted.get(name) {
            None => out.push((name.clone(), Change::Stop)),
            Some(service) if service.vip != *vip || service.proto != *proto => {
                out.push((name.clone(), Change::Rebind));
            }
            Some(_) => out.push((name.clone(), Change::Keep)),
        }
    }
    for name in wanted.keys() {
        if !running.contains_key(name) {
            out.push((name.clone(), Change::Start));
        }
    }
    out.sort_by_key(|(_, change)| match change {
        Change::Stop | Change::Rebind => 0,
        Change::Keep => 1,
        Change::Start => 2,
    });
    out
}

struct Running {
    runtime: Arc<ServiceRuntime>,
    /// The inputs of the current route, to rebuild it only when they
    /// change.
    inputs: PlanInputs,
    /// None while the VIP is not bound.
    task: Option<Task>,
    /// The last bind error, logged once rather than on every retry.
    bind_error: Option<String>,
}

struct Task {
    stop: watch::Sender<bool>,
    handle: JoinHandle<()>,
    /// The VIP socket as offered to a takeover, until the service stops.
    _handover: Option<Registration>,
}

pub struct ListenerSet {
    ctx: Arc<Context>,
    running: BTreeMap<String, Running>,
    /// The deny-list the context holds, to rebuild it only on a change.
    acl: Option<Vec<Cidr>>,
}

impl ListenerSet {
    pub fn new(ctx: Arc<Context>) -> Self {
        Self {
            ctx,
            running: BTreeMap::new(),
            acl: None,
        }
    }

    pub fn runtimes(&self) -> Vec<Arc<ServiceRuntime>> {
        self.running
            .values()
            .map(|r| Arc::clone(&r.runtime))
            .collect()
    }

    /// Brings the set to `snapshot`. Every failure is logged with the
    /// service's name; a service whose VIP cannot be bound stays in the
    /// set, not listening, and is retried by [`ListenerSet::retry_unbound`].
    pub async fn apply(&mut self, snapshot: &Snapshot) {
        self.apply_acl(snapshot.acl());
        let running: BTreeMap<String, (SocketAddr, L4Proto)> = self
            .running
            .iter()
            .map(|(name, r)| (name.clone(), (r.runtime.vip, r.runtime.proto)))
            .collect();
        for (name, change) in changes(&running, snapshot.services()) {
            let wanted = snapshot.services().get(&name);
            match (change, wanted) {
                (Change::Stop, _) => {
                    if let Some(old) = self.running.remove(&name) {
                        tracing::info!(service = name, vip = %old.runtime.vip, proto = %old.runtime.proto, "L4 userspace: service removed, no longer listening");
                        stop(old).await;
                    }
                }
                (Change::Rebind, Some(service)) => {
                    if let Some(old) = self.running.remove(&name) {
                        tracing::info!(service = name, from = %old.runtime.vip, to = %service.vip, proto = %service.proto, "L4 userspace: service moves to a new VIP");
                        stop(old).await;
                    }
                    self.start(service, snapshot);
                }
                (Change::Start, Some(service)) => self.start(service, snapshot),
                (Change::Keep, Some(service)) => self.update(service, snapshot),
                (_, None) => {}
            }
        }
        self.retry_unbound();
    }

    /// Tries again to bind the VIPs that failed (the address may have been
    /// added since).
    pub fn retry_unbound(&mut self) {
        let ctx = Arc::clone(&self.ctx);
        for running in self.running.values_mut().filter(|r| r.task.is_none()) {
            bind_and_serve(&ctx, running);
        }
    }

    pub fn has_unbound(&self) -> bool {
        self.running.values().any(|r| r.task.is_none())
    }

    /// Stops every service and waits for their listeners to close.
    pub async fn shutdown(&mut self) {
        let all = std::mem::take(&mut self.running);
        for (_, running) in all {
            stop(running).await;
        }
    }

    fn apply_acl(&mut self, acl: &[Cidr]) {
        if self.acl.as_deref() == Some(acl) {
            return;
        }
        self.ctx.acl.store(Arc::new(DenyList::new(acl)));
        if !acl.is_empty() || self.acl.is_some() {
            tracing::info!(entries = acl.len(), "L4 userspace: deny-list updated");
        }
        self.acl = Some(acl.to_vec());
    }

    fn start(&mut self, service: &Arc<L4Service>, snapshot: &Snapshot) {
        let inputs = PlanInputs::of(service, snapshot);
        let mut running = Running {
            runtime: Arc::new(ServiceRuntime::new(
                service,
                inputs.servers(),
                inputs.gates(),
            )),
            inputs,
            task: None,
            bind_error: None,
        };
        bind_and_serve(&self.ctx, &mut running);
        self.running.insert(service.name.clone(), running);
    }

    fn update(&mut self, service: &Arc<L4Service>, snapshot: &Snapshot) {
        let Some(running) = self.running.get_mut(&service.name) else {
            return;
        };
        let inputs = PlanInputs::of(service, snapshot);
        if running.inputs.same_as(&inputs) {
            return;
        }
        running
            .runtime
            .update(service, inputs.servers(), inputs.gates());
        running.inputs = inputs;
        tracing::info!(
            service = service.name,
            upstream = service.upstream,
            "L4 userspace: service re-planned; established flows keep their server"
        );
    }
}

/// Binds the service's VIP and starts its task, or records why not.
fn bind_and_serve(ctx: &Arc<Context>, running: &mut Running) {
    let runtime = &running.runtime;
    let (stop, stop_rx) = watch::channel(false);
    let sockets = &ctx.settings.sockets;
    let tag = |kind| SocketTag {
        kind,
        addr: runtime.vip,
        name: Some(runtime.name.clone()),
    };
    let handle = match runtime.proto {
        L4Proto::Tcp => {
            tcp::bind_or_adopt(runtime.vip, sockets.take(runtime.vip, false)).map(|listener| {
                let handover = sockets.register(tag(SocketKind::L4Tcp), &listener);
                let handle = tokio::spawn(tcp::serve(
                    listener,
                    Arc::clone(runtime),
                    Arc::clone(ctx),
                    stop_rx,
                ));
                (handle, handover)
            })
        }
        L4Proto::Udp => {
            udp::bind_or_adopt(runtime.vip, sockets.take(runtime.vip, true)).map(|socket| {
                let handover = sockets.register(tag(SocketKind::L4Udp), socket.get_ref());
                let handle = tokio::spawn(udp::serve(
                    socket,
                    Arc::clone(runtime),
                    Arc::clone(ctx),
                    stop_rx,
                ));
                (handle, handover)
            })
        }
    };
    match handle {
        Ok((handle, handover)) => {
            runtime.set_listen_state(ListenState::Listening);
            let retried = running.bind_error.take().is_some();
            tracing::info!(
                service = runtime.name, vip = %runtime.vip, proto = %runtime.proto, retried,
                "L4 userspace: listening"
            );
            running.task = Some(Task {
                stop,
                handle,
                _handover: handover,
            });
        }
        Err(source) => {
            let error = FallbackError::Bind {
                service: runtime.name.clone(),
                proto: runtime.proto,
                vip: runtime.vip,
                source,
            };
            let message = error.to_string();
            if running.bind_error.as_deref() == Some(message.as_str()) {
                tracing::debug!(%error, "L4 userspace: still cannot bind");
            } else {
                tracing::error!(
                    service = runtime.name, vip = %runtime.vip, proto = %runtime.proto, %error,
                    "L4 userspace: service NOT served; retried on configuration changes and every few seconds"
                );
            }
            runtime.set_listen_state(ListenState::Failed(message.clone()));
            running.bind_error = Some(message);
        }
    }
}

async fn stop(running: Running) {
    running
        .runtime
        .set_listen_state(ListenState::Failed("stopped".into()));
    if let Some(task) = running.task {
        let _ = task.stop.send(true);
        if let Err(error) = task.handle.await {
            tracing::error!(service = running.runtime.name, %error, "L4 userspace: service task failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(name: &str, vip: &str, proto: L4Proto) -> Arc<L4Service> {
        Arc::new(L4Service {
            name: name.into(),
            vip: vip.parse().expect("vip"),
            proto,
            upstream: "up".into(),
            snat: None,
            table_size: 251,
        })
    }

    #[test]
    fn stops_and_rebinds_come_before_starts() {
        let running: BTreeMap<String, (SocketAddr, L4Proto)> = [
            ("a", "10.0.0.1:80", L4Proto::Tcp),
            ("b", "10.0.0.2:80", L4Proto::Tcp),
            ("c", "10.0.0.3:53", L4Proto::Udp),
        ]
        .into_iter()
        .map(|(n, v, p)| (n.to_owned(), (v.parse().expect("vip"), p)))
        .collect();
        // a keeps its VIP, b is gone (its VIP passes to d), c turns TCP.
        let wanted: BTreeMap<String, Arc<L4Service>> = [
            service("a", "10.0.0.1:80", L4Proto::Tcp),
            service("c", "10.0.0.3:53", L4Proto::Tcp),
            service("d", "10.0.0.2:80", L4Proto::Tcp),
        ]
        .into_iter()
        .map(|s| (s.name.clone(), s))
        .collect();
        let got = changes(&running, &wanted);
        assert_eq!(
            got,
            [
                ("b".to_owned(), Change::Stop),
                ("c".to_owned(), Change::Rebind),
                ("a".to_owned(), Change::Keep),
                ("d".to_owned(), Change::Start),
            ]
        );
    }

    #[test]
    fn nothing_running_starts_everything() {
        let wanted: BTreeMap<String, Arc<L4Service>> = [service("a", "10.0.0.1:80", L4Proto::Tcp)]
            .into_iter()
            .map(|s| (s.name.clone(), s))
            .collect();
        assert_eq!(
            changes(&BTreeMap::new(), &wanted),
            [("a".to_owned(), Change::Start)]
        );
        assert!(changes(&BTreeMap::new(), &BTreeMap::new()).is_empty());
    }
}
