//! The soak's deterministic script: a seeded generator, the request mix,
//! the process faults (backend and etcd kills) and the admin churn. The same
//! seed and duration give the same plan.
use std::time::Duration;

/// SplitMix64: small, seedable, good enough to pick faults and bodies.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Uniform duration in `lo..hi` milliseconds.
    pub fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi.saturating_sub(lo).max(1)))
    }
}

/// RFC 9110 §9.2.2: the methods a client may repeat automatically.
pub fn is_idempotent(method: &str) -> bool {
    matches!(
        method,
        "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
    )
}

/// One request of the load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestSpec {
    pub method: &'static str,
    pub path: String,
    pub body_len: usize,
}

impl RequestSpec {
    pub fn idempotent(&self) -> bool {
        is_idempotent(self.method)
    }
}

/// Body sizes of POST and PUT: empty to 256 KiB.
pub const BODY_SIZES: [usize; 6] = [0, 100, 1_500, 16_384, 65_536, 262_144];

/// GET 40%, HEAD 10%, POST 20%, PUT 20%, DELETE 10%.
pub fn request_spec(rng: &mut Rng, n: u64) -> RequestSpec {
    let roll = rng.below(100);
    let method = match roll {
        0..40 => "GET",
        40..50 => "HEAD",
        50..70 => "POST",
        70..90 => "PUT",
        _ => "DELETE",
    };
    let body_len = match method {
        "POST" | "PUT" => BODY_SIZES[rng.below(BODY_SIZES.len() as u64) as usize],
        _ => 0,
    };
    RequestSpec {
        method,
        path: format!("/r/{n}"),
        body_len,
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProcessFault {
    KillBackend(usize),
    RestartBackend(usize),
    KillEtcd,
    RestartEtcd,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scheduled {
    /// Since the start of the run.
    pub at: Duration,
    pub fault: ProcessFault,
}

/// `kill -9` of one backend at a time (down 1–3 s, then 1–4 s until the
/// next), and etcd killed for 2–5 s every 45–90 s, all within
/// `start..end`. Every kill has its restart before `end`.
pub fn process_faults(
    seed: u64,
    start: Duration,
    end: Duration,
    backends: usize,
) -> Vec<Scheduled> {
    let mut rng = Rng::new(seed ^ 0xFA17);
    let mut plan = Vec::new();
    let mut t = start + rng.millis(500, 1_500);
    loop {
        let down = rng.millis(1_000, 3_000);
        if t + down >= end {
            break;
        }
        let victim = rng.below(backends as u64) as usize;
        plan.push(Scheduled {
            at: t,
            fault: ProcessFault::KillBackend(victim),
        });
        plan.push(Scheduled {
            at: t + down,
            fault: ProcessFault::RestartBackend(victim),
        });
        t += down + rng.millis(1_000, 4_000);
    }
    let span = end.saturating_sub(start);
    let mut t = start + span.min(rng.millis(5_000, 15_000)) / 2 + rng.millis(0, 5_000);
    loop {
        let down = rng.millis(2_000, 5_000);
        if t + down >= end {
            break;
        }
        plan.push(Scheduled {
            at: t,
            fault: ProcessFault::KillEtcd,
        });
        plan.push(Scheduled {
            at: t + down,
            fault: ProcessFault::RestartEtcd,
        });
        t += down + rng.millis(45_000, 90_000);
    }
    plan.sort_by_key(|s| s.at);
    plan
}

/// One admin API write of the churn.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminChange {
    pub method: &'static str,
    pub endpoint: &'static str,
    pub body: serde_json::Value,
    /// For the report: rules, upstream, service, acl.
    pub kind: &'static str,
}

/// Changes per second of rules and upstreams.
pub const CHANGES_PER_SECOND: u64 = 10;

/// What the admin churn does at tick `tick` (one tick every 100 ms): one
/// rule or upstream change, plus an L4 service added or removed every 2 s
/// and an ACL entry added or removed every second. Every version keeps
/// `host` routed to `pool` for every path the load uses, and `pool` with at
/// least `backends - 1` of its servers, so one killed backend always leaves
/// others to retry on.
pub fn admin_changes(
    rng: &mut Rng,
    tick: u64,
    host: &str,
    servers: &[String],
    vip: &str,
) -> Vec<AdminChange> {
    use serde_json::json;
    let mut changes = Vec::new();
    let churn = tick % 16;
    changes.push(match rng.below(6) {
        0 => AdminChange {
            method: "PUT",
            endpoint: "domain",
            body: json!({ host: rule_variant(rng.below(4)) }),
            kind: "rules",
        },
        1 | 2 => AdminChange {
            method: "PUT",
            endpoint: "upstream",
            body: json!({ "pool": pool_variant(rng, servers) }),
            kind: "upstream",
        },
        3 => AdminChange {
            method: "PUT",
            endpoint: "domain",
            body: json!({ format!("churn{churn}.test"): rule_variant(rng.below(4)) }),
            kind: "rules",
        },
        4 => AdminChange {
            method: "DELETE",
            endpoint: "domain",
            body: json!([format!("churn{churn}.test")]),
            kind: "rules",
        },
        _ => {
            let name = format!("churn{churn}");
            if rng.below(2) == 0 {
                let members = pool_variant(rng, servers);
                AdminChange {
                    method: "PUT",
                    endpoint: "upstream",
                    body: json!({ name: members }),
                    kind: "upstream",
                }
            } else {
                AdminChange {
                    method: "DELETE",
                    endpoint: "upstream",
                    body: json!([name]),
                    kind: "upstream",
                }
            }
        }
    });
    if tick.is_multiple_of(20) {
        changes.push(if (tick / 20).is_multiple_of(2) {
            AdminChange {
                method: "PUT",
                endpoint: "service",
                body: json!({"soak-l4": {"vip": vip, "proto": "tcp", "upstream": "pool"}}),
                kind: "service",
            }
        } else {
            AdminChange {
                method: "DELETE",
                endpoint: "service",
                body: json!(["soak-l4"]),
                kind: "service",
            }
        });
    }
    if tick % 10 == 5 {
        // TEST-NET-2 addresses: never a client of the soak.
        let cidr = format!("198.51.100.{}/32", (tick / 20) % 250 + 1);
        let method = if (tick / 10).is_multiple_of(2) {
            "PUT"
        } else {
            "DELETE"
        };
        changes.push(AdminChange {
            method,
            endpoint: "acl",
            body: json!([cidr]),
            kind: "acl",
        });
    }
    changes
}

/// Rule documents that all send every `/r/...` request to `pool`.
pub fn rule_variant(n: u64) -> serde_json::Value {
    use serde_json::json;
    let backend = json!({"type": "backend", "args": {"servername": "pool"}});
    let tagged = json!({"type": "backend", "args": {"servername": "pool", "X-Soak": "tagged"}});
    match n % 4 {
        0 => json!({"init": "b", "rules": {"b": backend}}),
        1 => json!({"init": "p", "rules": {
            "p": {"type": "path", "args": {"pattern": "/r/", "succ": "b", "fail": "t"}},
            "b": backend, "t": tagged}}),
        2 => json!({"init": "u", "rules": {
            "u": {"type": "ua", "args": {"pattern": "^nomatch", "succ": "t", "fail": "b"}},
            "b": backend, "t": tagged}}),
        _ => json!({"init": "p", "rules": {
            "p": {"type": "path", "args": {"regex": true, "pattern": "^/r/(\\d+)$", "succ": "b", "fail": "t"}},
            "b": backend, "t": tagged}}),
    }
}

/// `pool` with all servers or all but one, with varied parameters.
pub fn pool_variant(
    rng: &mut Rng,
    servers: &[String],
) -> serde_json::Map<String, serde_json::Value> {
    const PARAMS: [&str; 4] = [
        "",
        "weight=2",
        "max_fails=2 fail_timeout=5s",
        "weight=3 max_fails=1",
    ];
    let left_out = match rng.below(2) {
        0 => None,
        _ => Some(rng.below(servers.len() as u64) as usize),
    };
    servers
        .iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != left_out)
        .map(|(_, server)| {
            let params = PARAMS[rng.below(PARAMS.len() as u64) as usize];
            (server.clone(), serde_json::Value::from(params))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotent_methods_follow_rfc_9110() {
        for method in ["GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"] {
            assert!(is_idempotent(method), "{method}");
        }
        for method in ["POST", "PATCH", "CONNECT"] {
            assert!(!is_idempotent(method), "{method}");
        }
    }

    #[test]
    fn the_plan_is_deterministic_and_restarts_every_kill() {
        let start = Duration::from_secs(10);
        let end = Duration::from_secs(600);
        let plan = process_faults(7, start, end, 4);
        assert_eq!(plan, process_faults(7, start, end, 4));
        assert_ne!(plan, process_faults(8, start, end, 4));
        let mut down: Option<usize> = None;
        let mut etcd_down = false;
        for step in &plan {
            assert!(step.at >= start && step.at < end, "{step:?}");
            match step.fault {
                ProcessFault::KillBackend(b) => {
                    assert_eq!(down, None, "one backend down at a time");
                    down = Some(b);
                }
                ProcessFault::RestartBackend(b) => {
                    assert_eq!(down, Some(b));
                    down = None;
                }
                ProcessFault::KillEtcd => etcd_down = true,
                ProcessFault::RestartEtcd => etcd_down = false,
            }
        }
        assert_eq!(down, None);
        assert!(!etcd_down);
        assert!(plan.iter().any(|s| s.fault == ProcessFault::KillEtcd));
    }

    #[test]
    fn pool_variants_keep_all_but_one_server() {
        let servers: Vec<String> = (0..4).map(|i| format!("127.0.0.1:{}", 1000 + i)).collect();
        let mut rng = Rng::new(1);
        for _ in 0..100 {
            assert!(pool_variant(&mut rng, &servers).len() >= servers.len() - 1);
        }
    }

    #[test]
    fn admin_churn_runs_at_ten_rule_or_upstream_changes_a_second() {
        let servers = vec!["127.0.0.1:1".to_owned(), "127.0.0.1:2".to_owned()];
        let mut rng = Rng::new(3);
        let changes: Vec<AdminChange> = (0..CHANGES_PER_SECOND * 10)
            .flat_map(|tick| admin_changes(&mut rng, tick, "soak.test", &servers, "127.0.0.1:9"))
            .collect();
        let config = changes
            .iter()
            .filter(|c| c.kind == "rules" || c.kind == "upstream");
        assert_eq!(config.count(), 100);
        assert_eq!(changes.iter().filter(|c| c.kind == "service").count(), 5);
        assert_eq!(changes.iter().filter(|c| c.kind == "acl").count(), 10);
    }
}
