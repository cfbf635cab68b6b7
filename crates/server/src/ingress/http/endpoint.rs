//! Which endpoint a request addresses: the route template (never the raw path, whose ids would
//! make every document a metric series of its own), resolved from the path alone before the
//! request is routed, so metrics and logs share one label.

/// Most path segments any route has (`api/v1/{game}/{collection}/{id}/_incr`).
pub(super) const MAX_SEGMENTS: usize = 6;

/// Splits a path (leading `/` ignored) into `out`; the count, or `None` for too many segments.
/// A byte loop: `str::split` was ~600 instructions per request in callgrind on the hit path.
pub(super) fn split_path<'a>(path: &'a str, out: &mut [&'a str; MAX_SEGMENTS]) -> Option<usize> {
    let path = path.trim_start_matches('/');
    let mut count = 0;
    let mut start = 0;
    for (i, byte) in path.bytes().enumerate() {
        if byte == b'/' {
            *out.get_mut(count)? = &path[start..i];
            count += 1;
            start = i + 1;
        }
    }
    *out.get_mut(count)? = &path[start..];
    Some(count + 1)
}

/// An endpoint of the HTTP API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Health,
    Live,
    Ready,
    Metrics,
    /// The status page.
    Admin,
    OpenApi,
    CpuProfile,
    HeapProfile,
    Txn,
    Token,
    Revoke,
    List,
    BatchGet,
    Document,
    Incr,
    /// No route has this path.
    Unmatched,
}

impl Endpoint {
    /// Every endpoint, in the order of their numbers.
    pub const ALL: [Endpoint; 16] = [
        Endpoint::Health,
        Endpoint::Live,
        Endpoint::Ready,
        Endpoint::Metrics,
        Endpoint::Admin,
        Endpoint::OpenApi,
        Endpoint::CpuProfile,
        Endpoint::HeapProfile,
        Endpoint::Txn,
        Endpoint::Token,
        Endpoint::Revoke,
        Endpoint::List,
        Endpoint::BatchGet,
        Endpoint::Document,
        Endpoint::Incr,
        Endpoint::Unmatched,
    ];

    /// The route template (the `endpoint` label). `/api/{…}` (the `default` game's alias)
    /// counts as its `/api/v1/{game}/{…}` form.
    pub fn label(self) -> &'static str {
        match self {
            Endpoint::Health => "/healthz",
            Endpoint::Live => "/livez",
            Endpoint::Ready => "/readyz",
            Endpoint::Metrics => "/metrics",
            Endpoint::Admin => "/admin",
            Endpoint::OpenApi => "/openapi.json",
            Endpoint::CpuProfile => "/debug/pprof/profile",
            Endpoint::HeapProfile => "/debug/pprof/heap",
            Endpoint::Txn => "/api/v1/{game}/_txn",
            Endpoint::Token => "/api/v1/{game}/_token",
            Endpoint::Revoke => "/api/v1/{game}/_revoke",
            Endpoint::List => "/api/v1/{game}/{collection}",
            Endpoint::BatchGet => "/api/v1/{game}/{collection}/_batch_get",
            Endpoint::Document => "/api/v1/{game}/{collection}/{id}",
            Endpoint::Incr => "/api/v1/{game}/{collection}/{id}/_incr",
            Endpoint::Unmatched => "unmatched",
        }
    }

    /// The endpoint of a request's path.
    pub fn of_path(path: &str) -> Endpoint {
        let mut segments = [""; MAX_SEGMENTS];
        match split_path(path, &mut segments) {
            Some(count) => Endpoint::of(&segments[..count]),
            None => Endpoint::Unmatched,
        }
    }

    /// The endpoint of a path split into its segments (percent-encoded, as they arrive).
    pub fn of(segments: &[&str]) -> Endpoint {
        let rest = match segments {
            ["healthz"] => return Endpoint::Health,
            ["livez"] => return Endpoint::Live,
            ["readyz"] => return Endpoint::Ready,
            ["metrics"] => return Endpoint::Metrics,
            ["admin"] => return Endpoint::Admin,
            ["openapi.json"] => return Endpoint::OpenApi,
            ["debug", "pprof", "profile"] => return Endpoint::CpuProfile,
            ["debug", "pprof", "heap"] => return Endpoint::HeapProfile,
            ["api", "v1", _game, rest @ ..] => rest,
            ["api", rest @ ..] => rest,
            _ => return Endpoint::Unmatched,
        };
        match rest {
            ["_txn"] => Endpoint::Txn,
            ["_token"] => Endpoint::Token,
            ["_revoke"] => Endpoint::Revoke,
            [_collection] => Endpoint::List,
            [_collection, "_batch_get"] => Endpoint::BatchGet,
            [_collection, _id] => Endpoint::Document,
            [_collection, _id, "_incr"] => Endpoint::Incr,
            _ => Endpoint::Unmatched,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Endpoint;

    #[test]
    fn numbers_follow_all() {
        for (i, e) in Endpoint::ALL.iter().enumerate() {
            assert_eq!(*e as usize, i, "{e:?}");
        }
    }

    #[test]
    fn paths_resolve_to_their_templates() {
        let of = |path: &str| {
            let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
            Endpoint::of(&segments).label()
        };
        assert_eq!(
            of("/api/v1/rpg/players/42"),
            "/api/v1/{game}/{collection}/{id}"
        );
        assert_eq!(of("/api/players/42"), "/api/v1/{game}/{collection}/{id}");
        assert_eq!(of("/api/v1/rpg/players"), "/api/v1/{game}/{collection}");
        assert_eq!(of("/api/v1/rpg/_txn"), "/api/v1/{game}/_txn");
        assert_eq!(
            of("/api/v1/rpg/items/_batch_get"),
            "/api/v1/{game}/{collection}/_batch_get"
        );
        assert_eq!(
            of("/api/v1/rpg/items/i1/_incr"),
            "/api/v1/{game}/{collection}/{id}/_incr"
        );
        assert_eq!(of("/healthz"), "/healthz");
        assert_eq!(of("/metrics"), "/metrics");
        assert_eq!(of("/admin"), "/admin");
        assert_eq!(of("/openapi.json"), "/openapi.json");
        assert_eq!(of("/debug/pprof/profile"), "/debug/pprof/profile");
        assert_eq!(of("/debug/pprof/heap"), "/debug/pprof/heap");
        assert_eq!(of("/debug/pprof/other"), "unmatched");
        assert_eq!(of("/nothing/here"), "unmatched");
        assert_eq!(of("/api/v1/rpg/a/b/c/d"), "unmatched");
    }
}
