//! Cache tiers in front of the store. L1 (in-process) now; the L2 Redis tier and its
//! invalidation bus come with their own issue and will sit behind the same read-through API.

pub mod l1;
