//! Which servers of one upstream may take new requests and flows: pure
//! logic over the servers' health, drain and zone facts.
//!
//! - Only servers that are serving (not draining: not removed, not `down`,
//!   not in a disabled zone) are candidates.
//! - With a policy, only healthy candidates are routable; when no candidate
//!   is healthy (primaries and backups alike), all candidates are, at full
//!   weight: **fail-open**, as AWS does. elb never black-holes an upstream
//!   because its checks have not run yet.
//! - With `cross_zone: false`, routable servers in elb's own zone are
//!   preferred while there is any.
//! - Slow start scales the weight of a routable server.
use super::gate::FULL_WEIGHT;

/// The check-driven part of a server's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckState {
    Initial,
    Healthy,
    Unhealthy,
}

/// One server's facts, as the registry knows them.
#[derive(Clone, Copy, Debug)]
pub struct Facts<'a> {
    pub check: CheckState,
    /// False while draining or drained.
    pub serving: bool,
    pub zone: Option<&'a str>,
    /// Slow-start share of its weight, in thousandths.
    pub ramp_permille: u32,
}

/// What the upstream's policy says about routing.
#[derive(Clone, Copy, Debug)]
pub struct Rules<'a> {
    /// Whether the upstream has a health policy (checks decide).
    pub checked: bool,
    pub cross_zone: bool,
    pub own_zone: Option<&'a str>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Routing {
    /// Per server, in input order: (routable, weight in thousandths).
    pub servers: Vec<(bool, u32)>,
    pub fail_open: bool,
}

pub fn route(facts: &[Facts<'_>], rules: Rules<'_>) -> Routing {
    if !rules.checked {
        return Routing {
            servers: facts.iter().map(|f| (f.serving, FULL_WEIGHT)).collect(),
            fail_open: false,
        };
    }
    let healthy = |f: &Facts<'_>| f.serving && f.check == CheckState::Healthy;
    let any_healthy = facts.iter().any(healthy);
    if !any_healthy {
        return Routing {
            servers: facts.iter().map(|f| (f.serving, FULL_WEIGHT)).collect(),
            fail_open: facts.iter().any(|f| f.serving),
        };
    }
    let in_own_zone =
        |f: &Facts<'_>| rules.own_zone.is_some() && f.zone.is_some() && f.zone == rules.own_zone;
    let zone_only = !rules.cross_zone && facts.iter().any(|f| healthy(f) && in_own_zone(f));
    Routing {
        servers: facts
            .iter()
            .map(|f| {
                let routable = healthy(f) && (!zone_only || in_own_zone(f));
                (routable, f.ramp_permille.min(FULL_WEIGHT))
            })
            .collect(),
        fail_open: false,
    }
}

/// The slow-start share for the L4 tables, which are rebuilt in steps of
/// at most 10%: rounded down to a tenth, at least one tenth.
pub fn l4_step(permille: u32) -> u32 {
    (permille.min(FULL_WEIGHT) / 100 * 100).max(100)
}

#[cfg(test)]
mod tests {
    use super::*;
    use CheckState::*;

    fn facts(check: CheckState, serving: bool, zone: Option<&str>) -> Facts<'_> {
        Facts {
            check,
            serving,
            zone,
            ramp_permille: FULL_WEIGHT,
        }
    }

    const CHECKED: Rules<'static> = Rules {
        checked: true,
        cross_zone: true,
        own_zone: None,
    };

    fn routable(routing: &Routing) -> Vec<bool> {
        routing.servers.iter().map(|(r, _)| *r).collect()
    }

    #[test]
    fn only_healthy_servers_are_routable() {
        let routing = route(
            &[
                facts(Healthy, true, None),
                facts(Unhealthy, true, None),
                facts(Initial, true, None),
            ],
            CHECKED,
        );
        assert_eq!(routable(&routing), [true, false, false]);
        assert!(!routing.fail_open);
    }

    #[test]
    fn no_healthy_server_fails_open_to_every_serving_one() {
        let routing = route(
            &[
                facts(Unhealthy, true, None),
                facts(Initial, true, None),
                facts(Healthy, false, None),
            ],
            CHECKED,
        );
        assert_eq!(routable(&routing), [true, true, false]);
        assert!(routing.fail_open);
        // Nothing serving at all: nothing to open to.
        let routing = route(&[facts(Healthy, false, None)], CHECKED);
        assert!(!routing.fail_open);
    }

    #[test]
    fn without_a_policy_every_serving_server_is_routable() {
        let rules = Rules {
            checked: false,
            ..CHECKED
        };
        let routing = route(
            &[facts(Initial, true, None), facts(Initial, false, None)],
            rules,
        );
        assert_eq!(routable(&routing), [true, false]);
        assert!(!routing.fail_open);
    }

    #[test]
    fn own_zone_is_preferred_without_cross_zone_while_it_has_a_healthy_server() {
        let rules = Rules {
            checked: true,
            cross_zone: false,
            own_zone: Some("a"),
        };
        let servers = [
            facts(Healthy, true, Some("a")),
            facts(Healthy, true, Some("b")),
            facts(Healthy, true, None),
        ];
        assert_eq!(routable(&route(&servers, rules)), [true, false, false]);
        let own_zone_down = [
            facts(Unhealthy, true, Some("a")),
            facts(Healthy, true, Some("b")),
        ];
        assert_eq!(routable(&route(&own_zone_down, rules)), [false, true]);
        let cross = Rules {
            cross_zone: true,
            ..rules
        };
        assert_eq!(routable(&route(&servers, cross)), [true, true, true]);
    }

    #[test]
    fn slow_start_scales_routable_servers_and_l4_steps_by_tenths() {
        let mut ramping = facts(Healthy, true, None);
        ramping.ramp_permille = 250;
        let routing = route(&[ramping, facts(Healthy, true, None)], CHECKED);
        assert_eq!(routing.servers, [(true, 250), (true, FULL_WEIGHT)]);
        assert_eq!(l4_step(0), 100);
        assert_eq!(l4_step(250), 200);
        assert_eq!(l4_step(999), 900);
        assert_eq!(l4_step(1000), 1000);
    }
}
