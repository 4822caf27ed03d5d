//! Splitting and percent-decoding of `application/x-www-form-urlencoded`
//! query strings, strictly: a bad escape is an error, not a literal `%`.

use std::borrow::Cow;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC};

use super::RequestError;

/// Characters written as-is in a query value: RFC 3986's unreserved set.
pub(crate) const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Calls `visit` with each decoded `(key, value)` pair of `query`, in order.
pub(crate) fn for_each_pair<'q>(
    query: &'q str,
    mut visit: impl FnMut(Cow<'q, str>, Cow<'q, str>) -> Result<(), RequestError>,
) -> Result<(), RequestError> {
    let mut offset = 0;
    for pair in query.split('&') {
        let start = offset;
        offset += pair.len() + 1;
        if pair.is_empty() {
            continue;
        }
        let (key, value, value_start) = match pair.find('=') {
            Some(eq) => (&pair[..eq], &pair[eq + 1..], start + eq + 1),
            None => (pair, "", start + pair.len()),
        };
        visit(decode(key, start)?, decode(value, value_start)?)?;
    }
    Ok(())
}

/// Decodes one component: `+` is a space, `%XX` a byte; the result must be
/// UTF-8. `offset` places errors within the whole query.
pub(crate) fn decode(component: &str, offset: usize) -> Result<Cow<'_, str>, RequestError> {
    if !component.contains(['%', '+']) {
        return Ok(Cow::Borrowed(component));
    }
    let bytes = component.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let high = bytes.get(i + 1).and_then(|&b| hex_value(b));
                let low = bytes.get(i + 2).and_then(|&b| hex_value(b));
                match (high, low) {
                    (Some(high), Some(low)) => out.push(high << 4 | low),
                    _ => {
                        return Err(RequestError::InvalidEncoding {
                            position: offset + i,
                        });
                    }
                }
                i += 2;
            }
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8(out)
        .map(Cow::Owned)
        .map_err(|error| RequestError::InvalidEncoding {
            // An offset into the decoded bytes: close enough to find it.
            position: offset + error.utf8_error().valid_up_to(),
        })
}

fn hex_value(byte: u8) -> Option<u8> {
    (byte as char).to_digit(16).map(|digit| digit as u8)
}

/// Parses plain ASCII digits (no sign, no space) into a number, saturating
/// at `u64::MAX`. `None` when the text is empty or not all digits.
pub(crate) fn parse_digits(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(text.bytes().fold(0u64, |total, digit| {
        total
            .saturating_mul(10)
            .saturating_add(u64::from(digit - b'0'))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(query: &str) -> Result<Vec<(String, String)>, RequestError> {
        let mut out = Vec::new();
        for_each_pair(query, |k, v| {
            out.push((k.into_owned(), v.into_owned()));
            Ok(())
        })?;
        Ok(out)
    }

    #[test]
    fn decodes_escapes_and_plus() {
        assert_eq!(
            pairs("a=1&&b=x%26y+z%2B&c").unwrap(),
            vec![
                ("a".into(), "1".into()),
                ("b".into(), "x&y z+".into()),
                ("c".into(), "".into())
            ]
        );
    }

    #[test]
    fn bad_escapes_name_their_position() {
        assert_eq!(
            pairs("n=2&cursor0=%zz"),
            Err(RequestError::InvalidEncoding { position: 12 })
        );
        assert_eq!(
            pairs("n=2%"),
            Err(RequestError::InvalidEncoding { position: 3 })
        );
        assert!(pairs("a=%ff").is_err());
    }

    #[test]
    fn digits_are_strict_and_saturate() {
        assert_eq!(parse_digits("0042"), Some(42));
        assert_eq!(parse_digits(""), None);
        assert_eq!(parse_digits(" 4"), None);
        assert_eq!(parse_digits("-4"), None);
        assert_eq!(parse_digits("+4"), None);
        assert_eq!(parse_digits("99999999999999999999999"), Some(u64::MAX));
    }
}
