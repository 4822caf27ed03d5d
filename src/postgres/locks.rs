//! The advisory-lock key spaces of the crate: the consumer groups' members
//! and partitions, their tables' migration, and the outbox writers'
//! announcements. Each is the first of two `int4` keys, so that one
//! database's spaces stay apart in `pg_locks` (`classid`).

/// The advisory-lock key space of `kind` for `name`: a 31-bit FNV-1a
/// hash, stable across versions and platforms.
pub(crate) fn lock_space(kind: &str, name: &str) -> i32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in "zeroeventhub:"
        .bytes()
        .chain(kind.bytes())
        .chain(b":".iter().copied())
        .chain(name.bytes())
    {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    (hash & 0x7fff_ffff) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_are_stable_and_apart() {
        assert_eq!(
            lock_space("member", "billing"),
            lock_space("member", "billing")
        );
        assert_ne!(
            lock_space("member", "billing"),
            lock_space("partition", "billing")
        );
        assert_ne!(
            lock_space("member", "billing"),
            lock_space("member", "shipping")
        );
        assert!(lock_space("partition", "x") >= 0);
    }
}
