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
//!
//! A configuration reload ([`Limits::reload`]) replaces the limiters whose rate changed (their
//! buckets start full again; the others keep theirs). The check stays flat: an unlimited limit
//! costs one relaxed atomic load, a limited one adds an `ArcSwap` load (no reference count,
//! ~5 ns; `tests::check_cost`) to governor's ~30-37 ns.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use prometheus_client::metrics::counter::Counter;

use super::{Principal, Role};
use crate::config::RateLimitsConfig;
use crate::error::{ErrorCode, ServiceError};

/// How often idle buckets are dropped.
pub const CLEAN_EVERY: Duration = Duration::from_secs(10);

/// The limits' names, in slot order (per_ip, then the roles').
const NAMES: [&str; 5] = ["per_ip", "admin", "server", "readonly", "player"];

/// The configured buckets (an absent one is unlimited).
pub struct Limits {
    buckets: ArcSwap<Buckets>,
    /// Bit `slot` set: that limit is configured. Read first, so that an unlimited check costs
    /// one atomic load and never touches `buckets`.
    on: AtomicU8,
    max_tracked: AtomicUsize,
    /// Set by [`Limits::clean`] while a limiter is at `max_tracked`: the address limiter
    /// first, then the callers' in role order.
    full: [AtomicBool; 5],
    /// Requests refused, in the same order (the metric `rate_limited_total`).
    rejected: [Counter; 5],
    /// Held by [`Limits::clean`] and [`Limits::reload`], so that a clean-up never decides
    /// about a limiter a reload just replaced.
    tidying: parking_lot::Mutex<()>,
}

/// The limiters in force and their rates (0: none). A reload builds a new set, sharing the
/// limiters whose rate did not change.
#[derive(Default)]
struct Buckets {
    rates: [u32; 5],
    per_ip: Option<Arc<DefaultKeyedRateLimiter<IpAddr>>>,
    /// By role: admin, server, readonly, player.
    per_caller: [Option<Arc<DefaultKeyedRateLimiter<Box<str>>>>; 4],
}

/// The rates of `config`, in slot order.
fn rates(config: &RateLimitsConfig) -> [u32; 5] {
    [
        config.per_ip,
        config.admin,
        config.server,
        config.readonly,
        config.player,
    ]
}

impl Buckets {
    /// The buckets of `rates`, keeping those of `old` whose rate is the same.
    fn new(rates: [u32; 5], old: &Buckets) -> Buckets {
        let per_ip = if rates[0] == old.rates[0] {
            old.per_ip.clone()
        } else {
            limiter(rates[0]).map(Arc::new)
        };
        let per_caller = std::array::from_fn(|role| {
            if rates[role + 1] == old.rates[role + 1] {
                old.per_caller[role].clone()
            } else {
                limiter(rates[role + 1]).map(Arc::new)
            }
        });
        Buckets {
            rates,
            per_ip,
            per_caller,
        }
    }

    /// Bit `slot` set for every limit configured.
    fn on(&self) -> u8 {
        self.rates
            .iter()
            .enumerate()
            .filter(|(_, rate)| **rate > 0)
            .fold(0, |bits, (slot, _)| bits | (1u8 << slot))
    }
}

impl Limits {
    pub fn from_config(config: &RateLimitsConfig) -> Limits {
        let buckets = Buckets::new(rates(config), &Buckets::default());
        Limits {
            on: AtomicU8::new(buckets.on()),
            buckets: ArcSwap::from_pointee(buckets),
            max_tracked: AtomicUsize::new(config.max_tracked),
            full: Default::default(),
            rejected: Default::default(),
            tidying: parking_lot::Mutex::new(()),
        }
    }

    /// Counts refusals into these counters (per_ip, then admin, server, readonly, player).
    pub fn counting_rejections(mut self, rejected: [Counter; 5]) -> Limits {
        self.rejected = rejected;
        self
    }

    /// Takes the rates and `max_tracked` of `config` (a configuration reload). A limit whose
    /// rate changed gets new buckets (full: every address and caller starts afresh); the
    /// others keep theirs.
    pub fn reload(&self, config: &RateLimitsConfig) {
        let _tidying = self.tidying.lock();
        self.max_tracked
            .store(config.max_tracked, Ordering::Relaxed);
        let old = self.buckets.load_full();
        let new = Buckets::new(rates(config), &old);
        for (slot, flag) in self.full.iter().enumerate() {
            if new.rates[slot] != old.rates[slot] {
                // A new limiter tracks nobody yet; the next clean-up decides again.
                flag.store(false, Ordering::Relaxed);
            }
        }
        let on = new.on();
        self.buckets.store(Arc::new(new));
        self.on.store(on, Ordering::Relaxed);
    }

    /// True when no bucket is configured (nothing to check or clean).
    pub fn is_empty(&self) -> bool {
        self.on.load(Ordering::Relaxed) == 0
    }

    /// The rate of each limit in force (per_ip, admin, server, readonly, player; 0: none).
    pub fn rates(&self) -> [u32; 5] {
        self.buckets.load().rates
    }

    /// True when the limit of `slot` is to be checked now: configured, and not switched off
    /// by `max_tracked`.
    fn active(&self, slot: usize) -> bool {
        self.on.load(Ordering::Relaxed) & (1u8 << slot) != 0
            && !self.full[slot].load(Ordering::Relaxed)
    }

    /// `rate_limited` when `ip` sent more than its rate.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), ServiceError> {
        if !self.active(0) {
            return Ok(());
        }
        match &self.buckets.load().per_ip {
            Some(limiter) => limiter.check_key(&host(ip)).map_err(|_| {
                self.rejected[0].inc();
                limited("this address")
            }),
            None => Ok(()),
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
        if !self.active(slot + 1) {
            return Ok(());
        }
        match &self.buckets.load().per_caller[slot] {
            Some(limiter) => limiter.check_key(&principal.name).map_err(|_| {
                self.rejected[slot + 1].inc();
                limited("this caller")
            }),
            None => Ok(()),
        }
    }

    /// Drops the buckets of addresses and callers that are idle (full again), and decides
    /// whether the limiters may grow until the next clean-up.
    pub fn clean(&self) {
        let _tidying = self.tidying.lock();
        let buckets = self.buckets.load_full();
        let tracked = [
            buckets.per_ip.as_deref().map(clean),
            buckets.per_caller[0].as_deref().map(clean),
            buckets.per_caller[1].as_deref().map(clean),
            buckets.per_caller[2].as_deref().map(clean),
            buckets.per_caller[3].as_deref().map(clean),
        ];
        let max_tracked = self.max_tracked.load(Ordering::Relaxed);
        for ((tracked, flag), limit) in tracked.into_iter().zip(&self.full).zip(NAMES) {
            let full = tracked.is_some_and(|n| n >= max_tracked);
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
        let tracked = || limits.buckets.load().per_ip.as_ref().map_or(0, |l| l.len());
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

    /// A reload applies new rates at once: a limit lowered refuses, one removed lets
    /// everything through, one raised again starts with full buckets; a limit whose rate did
    /// not change keeps its buckets.
    #[test]
    fn a_reload_takes_the_new_rates() {
        let mut config = RateLimitsConfig {
            per_ip: 1,
            server: 0,
            ..RateLimitsConfig::default()
        };
        let limits = Limits::from_config(&config);
        let server = Principal {
            role: Role::Server,
            ..Principal::anonymous("game-server")
        };
        let ip = IpAddr::from([10, 0, 0, 1]);
        let passes = |n: usize| (0..n).all(|_| limits.check_caller(&server).is_ok());
        assert!(passes(100), "unlimited before the reload");
        assert!(limits.check_ip(ip).is_ok() && limits.check_ip(ip).is_ok());
        assert!(limits.check_ip(ip).is_err(), "the address is over its rate");

        config.server = 1;
        limits.reload(&config);
        assert_eq!(limits.rates(), [1, 0, 1, 0, 100]);
        assert!(passes(2), "a bucket holds twice the rate");
        assert!(limits.check_caller(&server).is_err(), "lowered: refused");
        assert!(
            limits.check_ip(ip).is_err(),
            "the unchanged address limit kept its buckets"
        );

        config.server = 0;
        limits.reload(&config);
        assert!(passes(100), "removed: unlimited again");
        assert!(!limits.is_empty());
        config.per_ip = 0;
        config.player = 0;
        limits.reload(&config);
        assert!(limits.is_empty());
        assert!(limits.check_ip(ip).is_ok(), "the address limit is gone");
        config.server = 1;
        limits.reload(&config);
        assert!(passes(2), "new buckets start full");
        assert!(limits.check_caller(&server).is_err());
    }

    /// The cost of a check, before and after reloadable limits (run with
    /// `cargo test --release -p datamiddleware --lib check_cost -- --ignored --nocapture`):
    /// governor's keyed check as the old code called it, against [`Limits::check_ip`] and
    /// [`Limits::check_caller`] limited and unlimited.
    #[test]
    #[ignore = "a measurement; run it with --release"]
    fn check_cost() {
        use std::hint::black_box;
        use std::time::Instant;
        const N: u32 = 2_000_000;
        let huge = u32::MAX / 4;
        let config = RateLimitsConfig {
            per_ip: huge,
            server: huge,
            ..RateLimitsConfig::default()
        };
        let limits = Limits::from_config(&config);
        let unlimited = Limits::from_config(&RateLimitsConfig {
            player: 0,
            ..RateLimitsConfig::default()
        });
        let bare: DefaultKeyedRateLimiter<IpAddr> = limiter(huge).unwrap();
        let bare_caller: DefaultKeyedRateLimiter<Box<str>> = limiter(huge).unwrap();
        let server = Principal {
            role: Role::Server,
            ..Principal::anonymous("game-server")
        };
        let ips: Vec<IpAddr> = (0..256u32)
            .map(|i| IpAddr::from((0x0a00_0000 + i).to_be_bytes()))
            .collect();
        let time = |what: &str, f: &dyn Fn(u32) -> bool| {
            for i in 0..N / 10 {
                black_box(f(i));
            }
            let mut best = f64::MAX;
            for _ in 0..5 {
                let started = Instant::now();
                for i in 0..N {
                    black_box(f(i));
                }
                best = best.min(started.elapsed().as_nanos() as f64 / N as f64);
            }
            println!("{what:58} {best:6.1} ns");
        };
        // The code before reloads: an `Option` of the limiter and the `max_tracked` flag.
        let (before, before_off) = (Some(bare), AtomicBool::new(false));
        // Not known to the optimizer (it would fold the unlimited check away).
        let (limits, unlimited) = (black_box(&limits), black_box(&unlimited));
        let before_check = |limiter: &Option<DefaultKeyedRateLimiter<IpAddr>>, ip| {
            let checked: Result<(), ServiceError> = match limiter {
                Some(limiter) if !before_off.load(Ordering::Relaxed) => limiter
                    .check_key(&host(ip))
                    .map_err(|_| limited("this address")),
                _ => Ok(()),
            };
            checked.is_ok()
        };
        time("before: check_ip, limited", &|i| {
            before_check(black_box(&before), ips[i as usize % 256])
        });
        time("before: check_ip, unlimited", &|i| {
            before_check(black_box(&None), ips[i as usize % 256])
        });
        time("after: check_ip, limited", &|i| {
            limits.check_ip(ips[i as usize % 256]).is_ok()
        });
        time("after: check_ip, unlimited", &|i| {
            unlimited.check_ip(ips[i as usize % 256]).is_ok()
        });
        time("before: check_caller, limited (governor alone)", &|_| {
            bare_caller.check_key(&server.name).is_ok()
        });
        time("after: check_caller, limited", &|_| {
            limits.check_caller(&server).is_ok()
        });
        time("after: check_caller, unlimited", &|_| {
            unlimited.check_caller(&server).is_ok()
        });
        time("ArcSwap::load alone", &|_| {
            limits.buckets.load().rates[0] > 0
        });
    }
}
