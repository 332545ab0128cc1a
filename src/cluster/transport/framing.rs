//! The minimal IPv4 header that lets a message pass through boringtun.
//!
//! boringtun's `Tunn` is built for a TUN device: it only carries plaintext that looks like an IP
//! packet, and on receipt it checks the version nibble and trims the packet to the header's total
//! length (ARCHITECTURE.md, "WireGuard in process"). We have no TUN device and no IP routing, so
//! each message gets a fixed 20-byte header that satisfies those checks and nothing more: version
//! 4, no options, the total length, and protocol 253 (RFC 3692, "for experimentation"), which no
//! real IP stack would hand to an application.

/// Length of the header we prepend: an IPv4 header without options.
pub(super) const HEADER_LEN: usize = 20;
/// Version 4, header length 5 words.
const VERSION_IHL: u8 = 0x45;
/// Offset of the big-endian total length.
const TOTAL_LEN_OFFSET: usize = 2;
/// Offset of the protocol number.
const PROTOCOL_OFFSET: usize = 9;
/// RFC 3692's experimental protocol number: our messages are not a real IP payload.
const PROTOCOL_EXPERIMENTAL: u8 = 253;
/// The default IPv4 time to live; nothing routes these packets, but zero would look broken.
const TTL: u8 = 64;

/// Why decrypted plaintext is not one of our framed messages.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(super) enum FramingError {
    #[error("payload of {len} bytes does not fit in one IPv4 packet")]
    TooLong { len: usize },
    #[error("plaintext is not a RustBalance message (bad IPv4 framing)")]
    BadHeader,
}

/// `payload` behind a header whose total length covers it.
pub(super) fn wrap(payload: &[u8]) -> Result<Vec<u8>, FramingError> {
    let total = u16::try_from(HEADER_LEN + payload.len())
        .map_err(|_| FramingError::TooLong { len: payload.len() })?;
    let mut packet = Vec::with_capacity(HEADER_LEN + payload.len());
    packet.push(VERSION_IHL);
    packet.push(0); // DSCP / ECN
    packet.extend_from_slice(&total.to_be_bytes());
    packet.extend_from_slice(&[0, 0, 0, 0]); // identification, flags, fragment offset
    packet.push(TTL);
    packet.push(PROTOCOL_EXPERIMENTAL);
    packet.extend_from_slice(&[0, 0]); // checksum: nobody checks it
    packet.extend_from_slice(&[0; 8]); // source and destination 0.0.0.0
    packet.extend_from_slice(payload);
    Ok(packet)
}

/// The payload of a packet made by [`wrap`], after checking that the header is ours.
pub(super) fn unwrap(packet: &[u8]) -> Result<&[u8], FramingError> {
    let header = packet.get(..HEADER_LEN).ok_or(FramingError::BadHeader)?;
    let total = usize::from(u16::from_be_bytes([
        header[TOTAL_LEN_OFFSET],
        header[TOTAL_LEN_OFFSET + 1],
    ]));
    if header[0] != VERSION_IHL
        || header[PROTOCOL_OFFSET] != PROTOCOL_EXPERIMENTAL
        || total != packet.len()
    {
        return Err(FramingError::BadHeader);
    }
    Ok(&packet[HEADER_LEN..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapped_payload_unwraps_to_itself() {
        let packet = wrap(b"{\"type\":\"Ack\"}").unwrap();
        assert_eq!(packet.len(), HEADER_LEN + 14);
        assert_eq!(packet[0] >> 4, 4, "boringtun looks at the version nibble");
        assert_eq!(unwrap(&packet).unwrap(), b"{\"type\":\"Ack\"}");
    }

    #[test]
    fn foreign_or_damaged_headers_are_refused() {
        let packet = wrap(b"hello").unwrap();
        assert_eq!(unwrap(&packet[..10]), Err(FramingError::BadHeader));
        assert_eq!(unwrap(&packet[..24]), Err(FramingError::BadHeader));
        let mut udp = packet.clone();
        udp[PROTOCOL_OFFSET] = 17;
        assert_eq!(unwrap(&udp), Err(FramingError::BadHeader));
        let mut v6 = packet;
        v6[0] = 0x60;
        assert_eq!(unwrap(&v6), Err(FramingError::BadHeader));
    }

    #[test]
    fn payload_too_long_for_ipv4_is_refused() {
        let payload = vec![0u8; usize::from(u16::MAX)];
        assert!(matches!(wrap(&payload), Err(FramingError::TooLong { .. })));
    }
}
