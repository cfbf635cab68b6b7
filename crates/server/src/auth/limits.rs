//! Rate limits (`[rate_limits]`): a token bucket per client address, checked before
//! authentication so that floods of bad credentials cannot buy verification work, and one per
//! caller (key name or token subject) with the rate of its role. Both front ends ask the same
//! [`Limits`]; `governor`'s keyed limiters do the counting.
//!
//! The limiters keep one small state per address or caller seen (an IPv6 address counts by its
//! /64 prefix, what one host usually holds). A task started with the server drops the idle ones
//! every [`CLEAN_EVERY`]; when a limiter still tracks `max_tracked` after that, that limiter
//! (only it: many addresses do not switch off the per-caller limits) is not consulted (nor
//! grown) until a later clean-up finds it below: the memory an attacker with many addresses
//! can make us spend is bounded, at the price of that limit being off meanwhile (logged).

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use prometheus_client::metrics::counter::Counter;

use super::{Principal, Role};
use crate::config::RateLimitsConfig;
use crate::error::{ErrorCode, ServiceError};

/// How often idle buckets are dropped.
pub const CLEAN_EVERY: Duration = Duration::from_secs(10);

/// The configured buckets (an absent one is unlimited).
pub struct Limits {
    per_ip: Option<DefaultKeyedRateLimiter<IpAddr>>,
    /// By role: admin, server, readonly, player.
    per_caller: [Option<DefaultKeyedRateLimiter<Box<str>>>; 4],
    max_tracked: usize,
    /// Set by [`Limits::clean`] while a limiter is at `max_tracked`: the address limiter
    /// first, then the callers' in role order.
    full: [AtomicBool; 5],
    /// Requests refused, in the same order (the metric `rate_limited_total`).
    rejected: [Counter; 5],
}

impl Limits {
    pub fn from_config(config: &RateLimitsConfig) -> Limits {
        Limits {
            per_ip: limiter(config.per_ip),
            per_caller: [
                limiter(config.admin),
                limiter(config.server),
                limiter(config.readonly),
                limiter(config.player),
            ],
            max_tracked: config.max_tracked,
            full: Default::default(),
            rejected: Default::default(),
        }
    }

    /// Counts refusals into these counters (per_ip, then admin, server, readonly, player).
    pub fn counting_rejections(mut self, rejected: [Counter; 5]) -> Limits {
        self.rejected = rejected;
        self
    }

    /// True when no bucket is configured (nothing to check or clean).
    pub fn is_empty(&self) -> bool {
        self.per_ip.is_none() && self.per_caller.iter().all(Option::is_none)
    }

    /// `rate_limited` when `ip` sent more than its rate.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), ServiceError> {
        match &self.per_ip {
            Some(limiter) if !self.full[0].load(Ordering::Relaxed) => {
                limiter.check_key(&host(ip)).map_err(|_| {
                    self.rejected[0].inc();
                    limited("this address")
                })
            }
            _ => Ok(()),
        }
    }

    /// `rate_limited` when `principal` sent more than its role's rate.
    pub fn check_caller(&self, principal: &Principal) -> Result<(), ServiceError> {
        let slot = match principal.role {
            Role::Admin => 0,
            Role::Server => 1,
            Role::Readonly => 2,
            Role::Player => 3,
        };
        match &self.per_caller[slot] {
            Some(limiter) if !self.full[slot + 1].load(Ordering::Relaxed) => {
                limiter.check_key(&principal.name).map_err(|_| {
                    self.rejected[slot + 1].inc();
                    limited("this caller")
                })
            }
            _ => Ok(()),
        }
    }

    /// Drops the buckets of addresses and callers that are idle (full again), and decides
    /// whether the limiters may grow until the next clean-up.
    pub fn clean(&self) {
        let tracked = [
            self.per_ip.as_ref().map(clean),
            self.per_caller[0].as_ref().map(clean),
            self.per_caller[1].as_ref().map(clean),
            self.per_caller[2].as_ref().map(clean),
            self.per_caller[3].as_ref().map(clean),
        ];
        const NAMES: [&str; 5] = ["per_ip", "admin", "server", "readonly", "player"];
        for ((tracked, flag), limit) in tracked.into_iter().zip(&self.full).zip(NAMES) {
            let full = tracked.is_some_and(|n| n >= self.max_tracked);
            if full != flag.swap(full, Ordering::Relaxed) {
                if full {
                    tracing::warn!(
                        limit,
                        tracked = tracked.unwrap_or_default(),
                        "rate limits: rate_limits.max_tracked are active; this limit is off \
                         until fewer are"
                    );
                } else {
                    tracing::info!(limit, "rate limits: this limit is back on");
                }
            }
        }
    }
}

/// Drops a limiter's idle buckets; how many it still tracks.
fn clean<K: std::hash::Hash + Eq + Clone>(limiter: &DefaultKeyedRateLimiter<K>) -> usize {
    limiter.retain_recent();
    limiter.shrink_to_fit();
    limiter.len()
}

/// The key of an address: itself, or for IPv6 its /64 prefix.
fn host(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(prefix.into())
        }
    }
}

fn limiter<K: std::hash::Hash + Eq + Clone>(rate: u32) -> Option<DefaultKeyedRateLimiter<K>> {
    let per_second = NonZeroU32::new(rate)?;
    let burst = NonZeroU32::new(rate.saturating_mul(2)).unwrap_or(per_second);
    Some(RateLimiter::keyed(
        Quota::per_second(per_second).allow_burst(burst),
    ))
}

fn limited(who: &str) -> ServiceError {
    ServiceError::new(
        ErrorCode::RateLimited,
        format!("too many requests from {who}; retry after a second"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv6_address_counts_by_its_64_prefix() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(host(a), host(b));
        assert_ne!(host(a), host(c));
        let v4: IpAddr = "10.0.0.7".parse().unwrap();
        assert_eq!(host(v4), v4, "IPv4 addresses count one by one");
    }

    /// What the README promises for `max_tracked`: a limiter that tracks that many at a
    /// clean-up is off (and does not grow) until a later clean-up finds fewer; the others
    /// stay on; idle buckets are dropped.
    #[test]
    fn a_limiter_at_max_tracked_is_off_until_fewer_are_active() {
        let config = RateLimitsConfig {
            per_ip: 1,
            player: 1,
            max_tracked: 3,
            ..RateLimitsConfig::default()
        };
        let limits = Limits::from_config(&config);
        let ip = |i: u8| IpAddr::from([10, 0, 0, i]);
        let exhaust = |addr: IpAddr| {
            // A bucket holds twice the rate: two pass, the third is refused.
            assert!(limits.check_ip(addr).is_ok() && limits.check_ip(addr).is_ok());
            assert!(limits.check_ip(addr).is_err(), "{addr} over its rate");
        };
        for i in 1..=3 {
            exhaust(ip(i));
        }
        let player = Principal {
            role: Role::Player,
            ..Principal::anonymous("p1")
        };
        assert!(limits.check_caller(&player).is_ok() && limits.check_caller(&player).is_ok());
        limits.clean();
        let tracked = || limits.per_ip.as_ref().map_or(0, |l| l.len());
        assert_eq!(tracked(), 3, "busy buckets are kept");
        // Off: the exhausted address passes, new addresses are let through untracked.
        assert!(limits.check_ip(ip(1)).is_ok(), "the address limit is off");
        for i in 4..=20 {
            assert!(limits.check_ip(ip(i)).is_ok());
        }
        assert_eq!(tracked(), 3, "no bucket added while off");
        // The per-caller limit is not switched off by many addresses.
        assert!(
            limits.check_caller(&player).is_err(),
            "the player's bucket is on"
        );
        // An exhausted bucket is refilled 2 s later (twice the rate, at the rate); governor
        // drops it one emission interval (1 s) after that, when it equals a new bucket.
        std::thread::sleep(Duration::from_millis(3100));
        limits.clean();
        assert_eq!(tracked(), 0, "idle buckets dropped");
        exhaust(ip(1));
    }
}
