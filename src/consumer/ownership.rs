//! Which instance of a consumer owns which partition, when several share
//! them: the rule, kept apart from how a store enforces it.
//!
//! Every live instance (member) has an id; sorted, the ids give each
//! member a rank. The member of rank `r` among `m` owns the partitions `p`
//! with `p % m == r`: every member computes the same split from the same
//! list, with no messages between them, and each partition has one
//! intended owner. A member that joins or leaves changes `m`; each member
//! then gives up what is no longer its share and takes what is, as soon as
//! its previous owner let it go. The store's locks make sure that at most
//! one member holds a partition at a time, and the cursors'
//! compare-and-set fences a member that holds one without knowing it lost
//! it.

/// The share of the member at `rank` among `members`, of a feed of
/// `partition_count` partitions.
pub(crate) fn share(partition_count: u32, members: usize, rank: usize) -> Vec<u32> {
    let members = members.max(1) as u64;
    let rank = rank as u64 % members;
    (0..partition_count)
        .filter(|partition| u64::from(*partition) % members == rank)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_every_partition_once() {
        for members in 1..6 {
            let mut all: Vec<u32> = (0..members)
                .flat_map(|rank| share(8, members, rank))
                .collect();
            all.sort();
            assert_eq!(all, (0..8).collect::<Vec<_>>(), "{members} members");
        }
        assert_eq!(share(8, 3, 1), [1, 4, 7]);
        assert_eq!(share(2, 3, 2), Vec::<u32>::new());
    }
}
