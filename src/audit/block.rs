//! How a block of the audit log holds its AuditEvents: as stored, one per line (NDJSON),
//! compressed with LZ4. A body is a codec byte, then for `LZ4` the plain length (u32, little
//! endian) and the LZ4 block. A body that starts with `{` is plain NDJSON: the links carried over
//! from the log of one row per event (migration `2026-12-01-000006_audit_blocks`).

use serde::Deserialize;

const LZ4: u8 = 1;
/// The most a body may claim to hold once decompressed: a tampered length must not exhaust
/// memory. A block holds at most one committer batch (512 events) or one write's records.
const MAX_PLAIN: usize = 256 << 20;

/// The events, in order, as one compressed body. Events are compact JSON (no raw line breaks).
pub fn pack<'a>(events: impl Iterator<Item = &'a str>) -> Vec<u8> {
    let mut plain = Vec::new();
    for (i, e) in events.enumerate() {
        debug_assert!(!e.contains('\n'), "an AuditEvent with a raw line break");
        if i > 0 {
            plain.push(b'\n');
        }
        plain.extend_from_slice(e.as_bytes());
    }
    let mut out = vec![0u8; 5 + lz4_flex::block::get_maximum_output_size(plain.len())];
    out[0] = LZ4;
    out[1..5].copy_from_slice(&(plain.len() as u32).to_le_bytes());
    let n = lz4_flex::block::compress_into(&plain, &mut out[5..])
        .expect("the buffer has the maximum output size");
    out.truncate(5 + n);
    out
}

/// The events a body holds, in order; an error says why it cannot be read (it was altered).
pub fn unpack(body: &[u8]) -> Result<Vec<String>, String> {
    let plain = match body.first() {
        None => return Ok(Vec::new()),
        Some(b'{') => body.to_vec(),
        Some(&LZ4) => {
            let len = body
                .get(1..5)
                .ok_or("the block is truncated")?
                .try_into()
                .map(u32::from_le_bytes)
                .map_err(|_| "the block is truncated")? as usize;
            if len > MAX_PLAIN {
                return Err(format!("the block claims {len} bytes"));
            }
            lz4_flex::block::decompress(&body[5..], len).map_err(|e| e.to_string())?
        }
        Some(other) => return Err(format!("unknown block encoding {other}")),
    };
    let text = String::from_utf8(plain).map_err(|e| e.to_string())?;
    Ok(text.split('\n').map(str::to_string).collect())
}

#[derive(Deserialize)]
struct Head {
    id: String,
    meta: HeadMeta,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct HeadMeta {
    last_updated: String,
}

/// A logged AuditEvent's id and when it was recorded (its `meta.lastUpdated`, µs); None when the
/// text is not such an event.
pub fn id_and_time(event: &str) -> Option<(String, i64)> {
    let head: Head = serde_json::from_str(event).ok()?;
    let at = crate::fhir::parse_instant_range(&head.meta.last_updated)?.start;
    Some((head.id, at))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_come_back_as_packed() {
        let events = [
            r#"{"resourceType":"AuditEvent","id":"a","meta":{"lastUpdated":"2026-01-02T03:04:05.000006Z"}}"#,
            r#"{"resourceType":"AuditEvent","id":"b","x":"line\nbreak escaped"}"#,
        ];
        let body = pack(events.iter().copied());
        assert_eq!(body[0], LZ4);
        assert_eq!(unpack(&body).unwrap(), events);
        assert_eq!(
            id_and_time(events[0]),
            Some((
                "a".to_string(),
                crate::fhir::parse_instant_range("2026-01-02T03:04:05.000006Z")
                    .unwrap()
                    .start
            ))
        );
        assert_eq!(id_and_time(events[1]), None);
        // Plain bodies (carried over) and empty ones.
        assert_eq!(unpack(events[0].as_bytes()).unwrap(), [events[0]]);
        assert!(unpack(b"").unwrap().is_empty());
    }

    #[test]
    fn altered_bodies_are_errors_not_panics() {
        let body = pack(["{\"a\":1}"; 40].iter().copied());
        let mut claims_a_lot = body.clone();
        claims_a_lot[1..5].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(unpack(&claims_a_lot).is_err());
        assert!(unpack(&body[..body.len() - 3]).is_err());
        assert!(unpack(&[LZ4, 1]).is_err());
        assert!(unpack(&[7, 0, 0, 0, 0]).is_err());
        let mut flipped = body.clone();
        flipped[6] ^= 0xff;
        let _ = unpack(&flipped);
    }
}
