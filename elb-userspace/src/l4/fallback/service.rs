//! A service's state shared by its listener task, its flows and the
//! statistics: the current route, counters and whether its VIP is bound.
use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use arc_swap::ArcSwap;
use elb_common::counters::{IPPROTO_TCP, IPPROTO_UDP};
use serde_json::{Value, json};

use super::{
    route::{Pick, Route, ServerRegistry, build_route, forget_unused},
    stats::{LogLimiter, ServiceCounters, ServiceStats},
};
use crate::{config::L4Proto, config::L4Service, targets::ServerGate, upstream::Server};

/// One warning per interval for each kind of per-flow failure.
const LOG_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenState {
    Listening,
    Failed(String),
}

pub struct ServiceRuntime {
    pub name: String,
    pub vip: SocketAddr,
    pub proto: L4Proto,
    route: ArcSwap<Route>,
    pub stats: Arc<ServiceStats>,
    registry: Mutex<ServerRegistry>,
    listen: Mutex<ListenState>,
    /// Connect (TCP) or session-socket (UDP) failures.
    pub connect_log: LogLimiter,
    /// New flows dropped: no server, session table full.
    pub drop_log: LogLimiter,
}

impl ServiceRuntime {
    pub fn new(service: &L4Service, servers: &[Server], gates: &[Arc<ServerGate>]) -> Self {
        let mut registry = ServerRegistry::default();
        let route = build_route(service, servers, gates, &mut registry);
        Self {
            name: service.name.clone(),
            vip: service.vip,
            proto: service.proto,
            route: ArcSwap::from_pointee(route),
            stats: Arc::default(),
            registry: Mutex::new(registry),
            listen: Mutex::new(ListenState::Failed("not bound yet".into())),
            connect_log: LogLimiter::new(LOG_INTERVAL),
            drop_log: LogLimiter::new(LOG_INTERVAL),
        }
    }

    /// Replaces the route at once: new flows use it, existing flows keep
    /// their server.
    pub fn update(&self, service: &L4Service, servers: &[Server], gates: &[Arc<ServerGate>]) {
        let mut registry = self.registry.lock().unwrap_or_else(PoisonError::into_inner);
        let route = build_route(service, servers, gates, &mut registry);
        self.route.store(Arc::new(route));
        let current = self.route.load();
        forget_unused(&mut registry, &current);
    }

    pub fn route(&self) -> Arc<Route> {
        self.route.load_full()
    }

    /// The IP protocol number, as the flow hash takes it.
    pub fn ip_proto(&self) -> u8 {
        match self.proto {
            L4Proto::Tcp => IPPROTO_TCP,
            L4Proto::Udp => IPPROTO_UDP,
        }
    }

    pub fn pick(&self, route: &Route, client: SocketAddr) -> Option<Pick> {
        route.pick(client, self.vip, self.ip_proto())
    }

    pub fn set_listen_state(&self, state: ListenState) {
        *self.listen.lock().unwrap_or_else(PoisonError::into_inner) = state;
    }

    pub fn listen_state(&self) -> ListenState {
        self.listen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn counters(&self) -> ServiceCounters {
        self.stats.counters()
    }

    /// `{"vip", "proto", "listening", ["error",] counters..., "servers": {addr: counters}}`.
    pub fn stats_json(&self, counters: ServiceCounters) -> Value {
        let mut object = serde_json::Map::new();
        object.insert("vip".into(), json!(self.vip.to_string()));
        object.insert("proto".into(), json!(self.proto.as_str()));
        match self.listen_state() {
            ListenState::Listening => {
                object.insert("listening".into(), json!(true));
            }
            ListenState::Failed(error) => {
                object.insert("listening".into(), json!(false));
                object.insert("error".into(), json!(error));
            }
        }
        if let Ok(Value::Object(fields)) = serde_json::to_value(counters) {
            object.extend(fields);
        }
        let registry = self.registry.lock().unwrap_or_else(PoisonError::into_inner);
        let servers: serde_json::Map<String, Value> = registry
            .snapshot()
            .into_iter()
            .map(|(addr, stats)| {
                let counters = serde_json::to_value(stats.counters()).unwrap_or(Value::Null);
                (addr.to_string(), counters)
            })
            .collect();
        object.insert("servers".into(), Value::Object(servers));
        Value::Object(object)
    }
}
