//! SHA-256 (FIPS 180-4), in plain safe Rust.
//!
//! spore names the cached agent binary after its digest
//! (`spore-agent-<sha256 prefix>`), so both ends must agree on it without
//! pulling in a crypto crate. This is a straightforward, unoptimised
//! implementation; the agent image is hashed once per process.

use byteorder::{BigEndian, ByteOrder};

/// Initial hash value: the first 32 bits of the fractional parts of the
/// square roots of the first 8 primes.
const H0: [u32; 8] = [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];

/// Round constants: the first 32 bits of the fractional parts of the cube
/// roots of the first 64 primes.
const K: [u32; 64] = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98,
    0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786,
    0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8,
    0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
    0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819,
    0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a,
    0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
    0xc67178f2,
];

/// Bytes per block.
const BLOCK: usize = 64;

/// Incremental SHA-256: [`update`](Sha256::update) with the data in any
/// pieces, then [`finish`](Sha256::finish).
///
/// ```
/// use spore_protocol::{hex, sha256, Sha256};
///
/// let mut hasher = Sha256::new();
/// hasher.update(b"ab");
/// hasher.update(b"c");
/// let digest = hasher.finish();
/// assert_eq!(digest, sha256(b"abc"));
/// assert!(hex(&digest).starts_with("ba7816bf"));
/// ```
#[derive(Clone, Debug)]
pub struct Sha256 {
    /// The running hash value.
    state: [u32; 8],
    /// A partial block; `block[..block_len]` holds data not yet compressed.
    block: [u8; BLOCK],
    /// Bytes in `block`, always below [`BLOCK`].
    block_len: usize,
    /// Message length in bytes so far (the length field is mod 2^64 bits).
    total: u64,
}

impl Sha256 {
    /// A hasher that has seen no data.
    pub fn new() -> Self {
        Sha256 { state: H0, block: [0; BLOCK], block_len: 0, total: 0 }
    }

    /// Feeds `data`; any split of the input gives the same digest.
    pub fn update(&mut self, mut data: &[u8]) {
        self.total = self.total.wrapping_add(data.len() as u64);
        if self.block_len > 0 {
            let take = (BLOCK - self.block_len).min(data.len());
            let (head, rest) = data.split_at(take);
            self.block[self.block_len..self.block_len + take].copy_from_slice(head);
            self.block_len += take;
            data = rest;
            if self.block_len < BLOCK {
                return;
            }
            compress(&mut self.state, &self.block);
            self.block_len = 0;
        }
        let mut blocks = data.chunks_exact(BLOCK);
        for block in &mut blocks {
            compress(&mut self.state, block);
        }
        let rest = blocks.remainder();
        self.block[..rest.len()].copy_from_slice(rest);
        self.block_len = rest.len();
    }

    /// Pads the message and returns the 32-byte digest.
    pub fn finish(mut self) -> [u8; 32] {
        let bit_len = self.total.wrapping_mul(8);
        // 0x80, then zeros up to 8 bytes short of a block boundary.
        let pad_len =
            if self.block_len < BLOCK - 8 { BLOCK - 8 - self.block_len } else { 2 * BLOCK - 8 - self.block_len };
        let mut pad = [0; BLOCK + 8];
        pad[0] = 0x80;
        self.update(&pad[..pad_len]);
        self.update(&bit_len.to_be_bytes());
        debug_assert_eq!(self.block_len, 0);

        let mut digest = [0; 32];
        BigEndian::write_u32_into(&self.state, &mut digest);
        digest
    }
}

impl Default for Sha256 {
    fn default() -> Self {
        Sha256::new()
    }
}

/// The SHA-256 digest of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(data);
    hasher.finish()
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(2 * bytes.len());
    for &byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0xf)]));
    }
    out
}

/// Runs the compression function over one 64-byte block.
fn compress(state: &mut [u32; 8], block: &[u8]) {
    let mut w = [0u32; 64];
    BigEndian::read_u32_into(block, &mut w[..16]);
    for t in 16..64 {
        let s0 = w[t - 15].rotate_right(7) ^ w[t - 15].rotate_right(18) ^ (w[t - 15] >> 3);
        let s1 = w[t - 2].rotate_right(17) ^ w[t - 2].rotate_right(19) ^ (w[t - 2] >> 10);
        w[t] = w[t - 16].wrapping_add(s0).wrapping_add(w[t - 7]).wrapping_add(s1);
    }

    let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut h] = *state;
    for (k, w) in K.iter().zip(w.iter()) {
        let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
        let ch = (e & f) ^ (!e & g);
        let t1 = h.wrapping_add(s1).wrapping_add(ch).wrapping_add(*k).wrapping_add(*w);
        let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
        let maj = (a & b) ^ (a & c) ^ (b & c);
        let t2 = s0.wrapping_add(maj);
        h = g;
        g = f;
        f = e;
        e = d.wrapping_add(t1);
        d = c;
        c = b;
        b = a;
        a = t1.wrapping_add(t2);
    }

    for (word, add) in state.iter_mut().zip([a, b, c, d, e, f, g, h]) {
        *word = word.wrapping_add(add);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex_digest(data: &[u8]) -> String {
        hex(&sha256(data))
    }

    #[test]
    fn fips_empty() {
        assert_eq!(hex_digest(b""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    }

    #[test]
    fn fips_abc() {
        assert_eq!(hex_digest(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn fips_448_bits() {
        assert_eq!(
            hex_digest(b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
        );
    }

    #[test]
    fn fips_896_bits() {
        assert_eq!(
            hex_digest(
                b"abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmn\
                  hijklmnoijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu"
            ),
            "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1"
        );
    }

    #[test]
    fn fips_one_million_a() {
        let mut hasher = Sha256::new();
        for _ in 0..1000 {
            hasher.update(&[b'a'; 1000]);
        }
        assert_eq!(hex(&hasher.finish()), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
        assert_eq!(
            hex_digest(&vec![b'a'; 1_000_000]),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"
        );
    }

    /// Lengths around the padding boundaries (55/56 bytes: the length field
    /// still fits or spills into a second block). Digests from `sha256sum`.
    #[test]
    fn padding_boundaries() {
        let cases = [
            (55, "9f4390f8d30c2dd92ec9f095b65e2b9ae9b0a925a5258e241c9f1e910f734318"),
            (56, "b35439a4ac6f0948b6d6f9e3c6af0f5f590ce20f1bde7090ef7970686ec6738a"),
            (57, "f13b2d724659eb3bf47f2dd6af1accc87b81f09f59f2b75e5c0bed6589dfe8c6"),
            (63, "7d3e74a05d7db15bce4ad9ec0658ea98e3f06eeecf16b4c6fff2da457ddc2f34"),
            (64, "ffe054fe7ae0cb6dc65c3af9b61d5209f439851db43d0ba5997337df154668eb"),
            (65, "635361c48bb9eab14198e76ea8ab7f1a41685d6ad62aa9146d301d4f17eb0ae0"),
            (119, "31eba51c313a5c08226adf18d4a359cfdfd8d2e816b13f4af952f7ea6584dcfb"),
        ];
        for (len, expected) in cases {
            assert_eq!(hex_digest(&vec![b'a'; len]), expected, "{len} bytes of 'a'");
        }
    }

    /// update() split at every offset, and into three pieces at every pair
    /// of offsets, equals one-shot.
    #[test]
    fn any_split_equals_one_shot() {
        let data: Vec<u8> = (0..300u32).map(|i| (i * 7 + i / 13) as u8).collect();
        let expected = sha256(&data);
        for i in 0..=data.len() {
            let mut hasher = Sha256::new();
            hasher.update(&data[..i]);
            hasher.update(&data[i..]);
            assert_eq!(hasher.finish(), expected, "split at {i}");
        }
        for i in (0..=data.len()).step_by(3) {
            for j in i..=data.len() {
                let mut hasher = Sha256::new();
                hasher.update(&data[..i]);
                hasher.update(&data[i..j]);
                hasher.update(&[]);
                hasher.update(&data[j..]);
                assert_eq!(hasher.finish(), expected, "split at {i} and {j}");
            }
        }
        let mut hasher = Sha256::new();
        for byte in &data {
            hasher.update(std::slice::from_ref(byte));
        }
        assert_eq!(hasher.finish(), expected, "one byte at a time");
    }

    #[test]
    fn hex_is_lower_case_and_complete() {
        assert_eq!(hex(&[]), "");
        assert_eq!(hex(&[0x00, 0x0f, 0xa0, 0xff]), "000fa0ff");
        let all: Vec<u8> = (0..=255).collect();
        let text = hex(&all);
        assert_eq!(text.len(), 512);
        assert!(text.starts_with("000102"));
        assert!(text.ends_with("fdfeff"));
    }
}

/// The POSIX `cksum` CRC of `data` (CRC-32, polynomial 0x04C11DB7, the
/// length appended, complemented), as `cksum` prints it. The bootstrap
/// checks a cached agent with it: every POSIX system has `cksum`, and it is
/// far cheaper than `sha256sum` (the file's name already carries the
/// SHA-256; the CRC catches a damaged copy).
pub fn posix_cksum(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = (i as u32) << 24;
            let mut bit = 0;
            while bit < 8 {
                c = if c & 0x8000_0000 != 0 { (c << 1) ^ 0x04C1_1DB7 } else { c << 1 };
                bit += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    let step = |crc: u32, byte: u8| (crc << 8) ^ TABLE[((crc >> 24) as u8 ^ byte) as usize];
    let mut crc = data.iter().fold(0u32, |c, &b| step(c, b));
    let mut len = data.len() as u64;
    while len != 0 {
        crc = step(crc, (len & 0xff) as u8);
        len >>= 8;
    }
    !crc
}

#[cfg(test)]
mod cksum_tests {
    use super::posix_cksum;

    #[test]
    fn matches_the_cksum_utility() {
        // Values printed by GNU coreutils `cksum` (and busybox's).
        assert_eq!(posix_cksum(b""), 4_294_967_295);
        assert_eq!(posix_cksum(b"abc\n"), 1_112_837_078);
        assert_eq!(posix_cksum(&[0u8; 100_000]), 1_260_869_142);
    }
}
