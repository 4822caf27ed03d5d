//! The cursors of the database feeds: a row's order key, written as
//! decimal numbers joined by `.`.

use crate::protocol::Cursor;
use crate::server::ReadError;

/// The cursor of the row at `position` of the feed `feed`: the position,
/// then the feed's id, so that another outbox's feed (whose positions run
/// alike) refuses it.
pub(crate) fn encode_row(position: u64, feed: u64) -> Cursor {
    encode([position, feed])
}

/// The position of a cursor that [`encode_row`] wrote for the feed `feed`;
/// `None` for anything else, a cursor of another feed included.
pub(crate) fn decode_row(cursor: &Cursor, feed: u64) -> Option<u64> {
    match decode::<2>(cursor)? {
        [position, id] if id == feed && i64::try_from(position).is_ok() => Some(position),
        _ => None,
    }
}

/// Writes an order key (one or more non-negative numbers) as a cursor.
pub(crate) fn encode<const N: usize>(key: [u64; N]) -> Cursor {
    let mut text = String::with_capacity(N * 21);
    let mut digits = itoa::Buffer::new();
    for (index, part) in key.iter().enumerate() {
        if index > 0 {
            text.push('.');
        }
        text.push_str(digits.format(*part));
    }
    Cursor::try_from(text).expect("decimal digits and dots are a valid cursor")
}

/// Reads an order key back from a cursor this module wrote: exactly `N`
/// plain decimal numbers (no sign, no leading zero). Anything else is not a
/// cursor of a database feed.
pub(crate) fn decode<const N: usize>(cursor: &Cursor) -> Option<[u64; N]> {
    let mut key = [0u64; N];
    let mut parts = cursor.as_str().split('.');
    for slot in &mut key {
        let part = parts.next()?;
        let plain = !part.is_empty()
            && part.bytes().all(|b| b.is_ascii_digit())
            && (part == "0" || !part.starts_with('0'));
        if !plain {
            return None;
        }
        *slot = part.parse().ok()?;
    }
    parts.next().is_none().then_some(key)
}

/// The refusal of the cursor of feed `feed` at `position` of `partition`,
/// which names no row: it expired if rows after it were deleted (it lies
/// below the last row that `prune` deleted there, or below the oldest row
/// kept), and is unknown if not. `oldest` and `pruned` are positions as
/// the database gives them.
pub(crate) fn refusal(
    feed: u64,
    partition: u32,
    position: u64,
    oldest: Option<i64>,
    pruned: Option<i64>,
) -> ReadError {
    let below = |bound: Option<i64>| bound.is_some_and(|bound| (position as i64) < bound);
    if below(pruned) || below(oldest) {
        ReadError::ExpiredCursor {
            partition,
            oldest: oldest.map(|oldest| encode_row(oldest as u64, feed)),
        }
    } else {
        ReadError::UnknownCursor { partition }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_cursor_names_its_feed() {
        let cursor = encode_row(17, 4_000_000_001);
        assert_eq!(cursor.as_str(), "17.4000000001");
        assert_eq!(decode_row(&cursor, 4_000_000_001), Some(17));
        assert_eq!(decode_row(&cursor, 4_000_000_002), None, "another feed's");
        assert_eq!(
            decode_row(&encode_row(u64::MAX, 9), 9),
            None,
            "past a bigint"
        );
        assert_eq!(decode_row(&encode([17]), 17), None, "without its feed");
    }

    #[test]
    fn a_cursor_below_what_is_kept_expired_and_any_other_is_unknown() {
        let expired = |position, oldest, pruned| {
            matches!(
                refusal(9, 3, position, oldest, pruned),
                ReadError::ExpiredCursor { partition: 3, .. }
            )
        };
        assert!(expired(4, Some(5), None), "below the oldest kept");
        assert!(expired(4, None, Some(5)), "below the last pruned");
        assert!(expired(4, Some(10), Some(3)));
        assert!(
            !expired(5, Some(5), None),
            "at the oldest: never handed out"
        );
        assert!(!expired(6, Some(5), Some(5)), "above both");
        assert!(!expired(6, None, None), "nothing kept, nothing pruned");
        match refusal(9, 3, 1, Some(5), None) {
            ReadError::ExpiredCursor { oldest, .. } => {
                assert_eq!(
                    oldest,
                    Some(encode_row(5, 9)),
                    "the oldest, as a cursor of the feed"
                );
            }
            other => panic!("{other:?}"),
        }
        match refusal(9, 3, 1, None, Some(5)) {
            ReadError::ExpiredCursor { oldest, .. } => assert_eq!(oldest, None),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            refusal(9, 3, 8, Some(5), Some(2)),
            ReadError::UnknownCursor { partition: 3 }
        ));
    }

    #[test]
    fn keys_round_trip() {
        let cursor = encode([748u64, 12]);
        assert_eq!(cursor.as_str(), "748.12");
        assert_eq!(decode::<2>(&cursor), Some([748, 12]));
        assert_eq!(decode::<1>(&encode([u64::MAX])), Some([u64::MAX]));
    }

    #[test]
    fn foreign_text_is_refused() {
        for text in [
            "",
            "1",
            "1.2.3",
            "01.2",
            "1.+2",
            "1..2",
            "a.b",
            "18446744073709551616.0",
        ] {
            let Ok(cursor) = Cursor::new(text) else {
                continue;
            };
            assert_eq!(decode::<2>(&cursor), None, "{text:?}");
        }
        assert_eq!(decode::<1>(&Cursor::new("1.2").unwrap()), None);
        assert_eq!(decode::<1>(&Cursor::first()), None);
    }
}
