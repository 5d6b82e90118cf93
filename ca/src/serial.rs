//! Certificate serial numbers. Both the root the CA makes for itself (`keys`)
//! and the leaves it signs (`signer`) need one, so it lives apart from either.

use rcgen::SerialNumber;

/// A random positive 128-bit serial: unique without keeping state, and never
/// zero or negative, which some verifiers reject (RFC 5280 4.1.2.2).
pub fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    SerialNumber::from_slice(&bytes)
}
