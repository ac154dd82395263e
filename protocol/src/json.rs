//! The bodies' JSON, read and written without miniserde: the agent's codec.
//!
//! The agent ships as a small static binary, and miniserde's generic
//! machinery (a visitor per type, boxed builders, float parsing with its
//! tables) was a tenth of it. This codec is byte-compatible with
//! [`miniserde::json`] for every body type of [`crate::body`]: the same
//! output (fields in declaration order, `None` as `null`, the same string
//! escapes), and it accepts and rejects the same input (fields in any order,
//! unknown fields skipped whatever they hold, missing `Option` fields as
//! `None`, the last of duplicated fields, integers only where the body has
//! them). One difference: an *unknown* field holding a number too large for
//! an `f64` (`1e400`) is skipped here, where miniserde rejects the body.
//! The `bodies` fuzz target checks the two against each other.
//!
//! Nothing here recurses on the input: an unknown field's value is skipped
//! with a heap stack of its open brackets, however deep.

use std::collections::BTreeMap;

/// Input that is not the JSON expected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Invalid;

type Res<T> = Result<T, Invalid>;

/// A value written as JSON.
pub trait Encode {
    /// Append the JSON of `self` to `out`.
    fn encode(&self, out: &mut Vec<u8>);
}

/// A value read from JSON.
pub trait Decode: Sized {
    /// Read one value.
    fn decode(r: &mut Reader<'_>) -> Result<Self, Invalid>;
    /// The value of a field that is absent: none (an error), but for
    /// `Option`s.
    fn missing() -> Option<Self> {
        None
    }
}

/// The JSON of `value`.
pub fn to_vec<T: Encode + ?Sized>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    value.encode(&mut out);
    out
}

/// Read `input`, UTF-8, as one `T` (whitespace around it allowed).
pub fn from_slice<T: Decode>(input: &[u8]) -> Result<T, Invalid> {
    std::str::from_utf8(input).map_err(|_| Invalid)?;
    let mut r = Reader { input, pos: 0 };
    let value = T::decode(&mut r)?;
    match r.peek() {
        None => Ok(value),
        Some(_) => Err(Invalid),
    }
}

/// A position in JSON text, valid UTF-8.
pub struct Reader<'a> {
    input: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    /// The next byte after whitespace, not consumed.
    fn peek(&mut self) -> Option<u8> {
        while let Some(&b) = self.input.get(self.pos) {
            if !matches!(b, b' ' | b'\n' | b'\t' | b'\r') {
                return Some(b);
            }
            self.pos += 1;
        }
        None
    }

    /// The next byte, whitespace or not, consumed.
    fn byte(&mut self) -> Res<u8> {
        let b = *self.input.get(self.pos).ok_or(Invalid)?;
        self.pos += 1;
        Ok(b)
    }

    /// Consume `b`, after whitespace.
    fn eat(&mut self, b: u8) -> Res<()> {
        match self.peek() {
            Some(c) if c == b => {
                self.pos += 1;
                Ok(())
            }
            _ => Err(Invalid),
        }
    }

    /// Consume the literal `word` (`null`, `true`, `false`), after whitespace.
    fn literal(&mut self, word: &[u8]) -> Res<()> {
        self.peek();
        match self.input.get(self.pos..self.pos + word.len()) {
            Some(w) if w == word => {
                self.pos += word.len();
                Ok(())
            }
            _ => Err(Invalid),
        }
    }

    /// `null`, consumed, if that is what comes next.
    fn null(&mut self) -> Res<bool> {
        if self.peek() != Some(b'n') {
            return Ok(false);
        }
        self.literal(b"null").map(|()| true)
    }

    /// A number: `Some((negative, magnitude))` for an integer that fits, as
    /// miniserde reads it; `None` for any other valid number (a fraction, an
    /// exponent, too many digits: a float, in no body).
    fn number(&mut self) -> Res<Option<(bool, u64)>> {
        self.peek();
        let negative = self.input.get(self.pos) == Some(&b'-');
        if negative {
            self.pos += 1;
        }
        let mut fits = true;
        let mut n: u64 = 0;
        match self.byte()? {
            b'0' => {
                if self.input.get(self.pos).is_some_and(u8::is_ascii_digit) {
                    return Err(Invalid);
                }
            }
            d @ b'1'..=b'9' => {
                n = u64::from(d - b'0');
                while let Some(&d @ b'0'..=b'9') = self.input.get(self.pos) {
                    self.pos += 1;
                    match n.checked_mul(10).and_then(|n| n.checked_add(u64::from(d - b'0'))) {
                        Some(m) => n = m,
                        None => fits = false,
                    }
                }
            }
            _ => return Err(Invalid),
        }
        if self.input.get(self.pos) == Some(&b'.') {
            self.pos += 1;
            self.digits()?;
            fits = false;
        }
        if matches!(self.input.get(self.pos), Some(b'e' | b'E')) {
            self.pos += 1;
            if matches!(self.input.get(self.pos), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            self.digits()?;
            fits = false;
        }
        // miniserde reads -n as an i64, and anything below i64::MIN as a float.
        if negative && n > 1 << 63 {
            fits = false;
        }
        Ok(if fits { Some((negative, n)) } else { None })
    }

    /// One or more decimal digits.
    fn digits(&mut self) -> Res<()> {
        let start = self.pos;
        while self.input.get(self.pos).is_some_and(u8::is_ascii_digit) {
            self.pos += 1;
        }
        if self.pos == start {
            return Err(Invalid);
        }
        Ok(())
    }

    /// An integer in `min..=max`, as the bits of an `i64` (or a `u64`).
    fn integer(&mut self, min: i64, max: u64) -> Res<u64> {
        match self.number()? {
            Some((false, n)) if n <= max => Ok(n),
            // n <= 2^63 (`number`): -n is an i64.
            Some((true, n)) if min < 0 && (n.wrapping_neg() as i64) >= min => Ok(n.wrapping_neg()),
            _ => Err(Invalid),
        }
    }

    /// A string, after whitespace.
    fn string(&mut self) -> Res<String> {
        self.eat(b'"')?;
        let mut out = Vec::new();
        loop {
            let start = self.pos;
            while self.input.get(self.pos).is_some_and(|&b| b >= 0x20 && b != b'"' && b != b'\\') {
                self.pos += 1;
            }
            out.extend_from_slice(&self.input[start..self.pos]);
            match self.byte()? {
                b'"' => break,
                b'\\' => self.escape(&mut out)?,
                _ => return Err(Invalid),
            }
        }
        // Valid UTF-8 input, cut at ASCII bytes, and escapes encoded as UTF-8.
        String::from_utf8(out).map_err(|_| Invalid)
    }

    /// The escape after a backslash, appended to `out` as UTF-8.
    fn escape(&mut self, out: &mut Vec<u8>) -> Res<()> {
        let b = match self.byte()? {
            b @ (b'"' | b'\\' | b'/') => b,
            b'b' => 8,
            b'f' => 12,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'u' => {
                let mut c = self.hex4()?;
                if (0xDC00..0xE000).contains(&c) {
                    return Err(Invalid);
                }
                if (0xD800..0xDC00).contains(&c) {
                    if self.byte()? != b'\\' || self.byte()? != b'u' {
                        return Err(Invalid);
                    }
                    let low = self.hex4()?;
                    if !(0xDC00..0xE000).contains(&low) {
                        return Err(Invalid);
                    }
                    c = (((c - 0xD800) << 10) | (low - 0xDC00)) + 0x1_0000;
                }
                let c = char::from_u32(c).ok_or(Invalid)?;
                out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                return Ok(());
            }
            _ => return Err(Invalid),
        };
        out.push(b);
        Ok(())
    }

    /// Four hex digits.
    fn hex4(&mut self) -> Res<u32> {
        let mut n = 0;
        for _ in 0..4 {
            let d = (self.byte()? as char).to_digit(16).ok_or(Invalid)?;
            n = n * 16 + d;
        }
        Ok(n)
    }

    /// An object, each member's value read by `member` given its key.
    pub fn object(&mut self, member: &mut dyn FnMut(&mut Self, &str) -> Res<()>) -> Res<()> {
        self.eat(b'{')?;
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            let key = self.string()?;
            self.eat(b':')?;
            member(self, &key)?;
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return Err(Invalid),
            }
        }
    }

    /// An array, each element read by `element`.
    fn array(&mut self, element: &mut dyn FnMut(&mut Self) -> Res<()>) -> Res<()> {
        self.eat(b'[')?;
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            element(self)?;
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return Err(Invalid),
            }
        }
    }

    /// Any value, read and dropped.
    pub fn skip(&mut self) -> Res<()> {
        // The closing bracket of each container open around the position.
        let mut open: Vec<u8> = Vec::new();
        loop {
            match self.peek().ok_or(Invalid)? {
                c @ (b'{' | b'[') => {
                    self.pos += 1;
                    let close = c + 2; // `}` and `]`
                    if self.peek() == Some(close) {
                        self.pos += 1;
                    } else {
                        if close == b'}' {
                            self.string()?;
                            self.eat(b':')?;
                        }
                        open.push(close);
                        continue;
                    }
                }
                b'"' => drop(self.string()?),
                b'n' => self.literal(b"null")?,
                b't' => self.literal(b"true")?,
                b'f' => self.literal(b"false")?,
                _ => drop(self.number()?),
            }
            // After a value: the next one, or the end of containers.
            loop {
                let Some(&close) = open.last() else { return Ok(()) };
                match self.peek() {
                    Some(b',') => {
                        self.pos += 1;
                        if close == b'}' {
                            self.string()?;
                            self.eat(b':')?;
                        }
                        break;
                    }
                    Some(c) if c == close => {
                        self.pos += 1;
                        open.pop();
                    }
                    _ => return Err(Invalid),
                }
            }
        }
    }
}

/// Which of `fields` `key` is (`fields.len()` for none).
pub fn index(fields: &[&str], key: &str) -> usize {
    fields.iter().position(|f| *f == key).unwrap_or(fields.len())
}

/// Read a field's value into `slot` (the last of duplicated fields wins).
/// Not inlined: one copy per field type, not per field.
#[inline(never)]
pub fn set<T: Decode>(slot: &mut Option<T>, r: &mut Reader<'_>) -> Result<(), Invalid> {
    *slot = Some(T::decode(r)?);
    Ok(())
}

/// A field's value: the one read, or its [`Decode::missing`] value.
pub fn field<T: Decode>(value: Option<T>) -> Result<T, Invalid> {
    match value {
        Some(v) => Ok(v),
        None => T::missing().ok_or(Invalid),
    }
}

impl Encode for str {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(b'"');
        for &b in self.as_bytes() {
            let escaped = match b {
                b'"' => b'"',
                b'\\' => b'\\',
                8 => b'b',
                b'\t' => b't',
                b'\n' => b'n',
                12 => b'f',
                b'\r' => b'r',
                0..=0x1f => {
                    const HEX: &[u8; 16] = b"0123456789abcdef";
                    out.extend_from_slice(&[
                        b'\\',
                        b'u',
                        b'0',
                        b'0',
                        HEX[usize::from(b >> 4)],
                        HEX[usize::from(b & 15)],
                    ]);
                    continue;
                }
                _ => {
                    out.push(b);
                    continue;
                }
            };
            out.extend_from_slice(&[b'\\', escaped]);
        }
        out.push(b'"');
    }
}

impl Encode for String {
    fn encode(&self, out: &mut Vec<u8>) {
        self.as_str().encode(out);
    }
}

impl Decode for String {
    fn decode(r: &mut Reader<'_>) -> Res<Self> {
        r.string()
    }
}

impl Encode for bool {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(if *self { b"true" } else { b"false" });
    }
}

impl Decode for bool {
    fn decode(r: &mut Reader<'_>) -> Res<Self> {
        match r.peek() {
            Some(b't') => r.literal(b"true").map(|()| true),
            _ => r.literal(b"false").map(|()| false),
        }
    }
}

/// `n` in decimal, `-` first if `negative`.
fn decimal(out: &mut Vec<u8>, negative: bool, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if negative {
        out.push(b'-');
    }
    out.extend_from_slice(&buf[i..]);
}

macro_rules! integers {
    ($($ty:ty),*) => {$(
        impl Encode for $ty {
            fn encode(&self, out: &mut Vec<u8>) {
                let n = *self as i64; // every value of $ty
                decimal(out, n < 0, n.unsigned_abs());
            }
        }

        impl Decode for $ty {
            fn decode(r: &mut Reader<'_>) -> Res<Self> {
                // Bits of an i64 in range: truncated, the value.
                Ok(r.integer(<$ty>::MIN as i64, <$ty>::MAX as u64)? as $ty)
            }
        }
    )*};
}

integers!(u8, u16, u32, i32, i64);

impl Encode for u64 {
    fn encode(&self, out: &mut Vec<u8>) {
        decimal(out, false, *self);
    }
}

impl Decode for u64 {
    fn decode(r: &mut Reader<'_>) -> Res<Self> {
        r.integer(0, u64::MAX)
    }
}

impl<T: Encode> Encode for Option<T> {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Some(v) => v.encode(out),
            None => out.extend_from_slice(b"null"),
        }
    }
}

impl<T: Decode> Decode for Option<T> {
    fn decode(r: &mut Reader<'_>) -> Res<Self> {
        if r.null()? {
            return Ok(None);
        }
        T::decode(r).map(Some)
    }

    fn missing() -> Option<Self> {
        Some(None)
    }
}

impl<T: Encode> Encode for Vec<T> {
    fn encode(&self, out: &mut Vec<u8>) {
        let mut sep = b'[';
        for v in self {
            out.push(sep);
            sep = b',';
            v.encode(out);
        }
        if sep == b'[' {
            out.push(sep);
        }
        out.push(b']');
    }
}

impl<T: Decode> Decode for Vec<T> {
    fn decode(r: &mut Reader<'_>) -> Res<Self> {
        let mut v = Vec::new();
        r.array(&mut |r| {
            v.push(T::decode(r)?);
            Ok(())
        })?;
        Ok(v)
    }
}

impl<V: Encode> Encode for BTreeMap<String, V> {
    fn encode(&self, out: &mut Vec<u8>) {
        let mut sep = b'{';
        for (k, v) in self {
            out.push(sep);
            sep = b',';
            k.encode(out);
            out.push(b':');
            v.encode(out);
        }
        if sep == b'{' {
            out.push(sep);
        }
        out.push(b'}');
    }
}

impl<V: Decode> Decode for BTreeMap<String, V> {
    fn decode(r: &mut Reader<'_>) -> Res<Self> {
        // Built at once, the last of duplicated keys kept, as by inserts.
        let mut pairs = Vec::new();
        r.object(&mut |r, key| {
            pairs.push((key.to_owned(), V::decode(r)?));
            Ok(())
        })?;
        Ok(pairs.into_iter().collect())
    }
}

/// [`Encode`] and [`Decode`] for structs with named fields, as miniserde
/// derives them: `{"first":…,"second":…}` in declaration order.
#[macro_export]
macro_rules! json_struct {
    ($($ty:ident { $($field:ident),* $(,)? })*) => {$(
        impl $crate::json::Encode for $ty {
            #[allow(unused_mut, unused_assignments)]
            fn encode(&self, out: &mut Vec<u8>) {
                let mut sep = "{\"";
                $(
                    out.extend_from_slice(sep.as_bytes());
                    sep = ",\"";
                    out.extend_from_slice(concat!(stringify!($field), "\":").as_bytes());
                    $crate::json::Encode::encode(&self.$field, out);
                )*
                if sep == "{\"" {
                    out.push(b'{');
                }
                out.push(b'}');
            }
        }

        impl $crate::json::Decode for $ty {
            #[allow(unused_mut, unused_variables)]
            fn decode(r: &mut $crate::json::Reader<'_>) -> Result<Self, $crate::json::Invalid> {
                $( let mut $field = None; )*
                r.object(&mut |r, key| {
                    let mut i = $crate::json::index(&[$(stringify!($field)),*], key);
                    $(
                        if i == 0 {
                            return $crate::json::set(&mut $field, r);
                        }
                        i -= 1;
                    )*
                    r.skip()
                })?;
                Ok($ty { $( $field: $crate::json::field($field)?, )* })
            }
        }
    )*};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, miniserde::Serialize, miniserde::Deserialize)]
    struct Sample {
        text: String,
        n: u32,
        i: i64,
        maybe: Option<u64>,
        list: Vec<String>,
        map: BTreeMap<String, String>,
        flag: bool,
    }

    json_struct! { Sample { text, n, i, maybe, list, map, flag } }

    fn both(input: &str) -> (Option<Sample>, Option<Sample>) {
        (miniserde::json::from_str(input).ok(), from_slice(input.as_bytes()).ok())
    }

    #[test]
    fn writes_what_miniserde_writes() {
        let all: String = (0u8..128).map(char::from).chain("é☃\u{1F600}".chars()).collect();
        for text in ["", "plain", &all] {
            let s = Sample {
                text: text.into(),
                n: u32::MAX,
                i: i64::MIN,
                maybe: None,
                list: vec![text.into(), "x".into()],
                map: [("k\"".to_owned(), text.to_owned()), ("a".to_owned(), String::new())].into(),
                flag: true,
            };
            assert_eq!(String::from_utf8(to_vec(&s)).unwrap(), miniserde::json::to_string(&s));
            assert_eq!(from_slice::<Sample>(&to_vec(&s)).unwrap(), s);
            let s = Sample { maybe: Some(0), list: vec![], map: BTreeMap::new(), i: 7, flag: false, ..s };
            assert_eq!(String::from_utf8(to_vec(&s)).unwrap(), miniserde::json::to_string(&s));
        }
    }

    #[test]
    fn reads_what_miniserde_reads() {
        let ok = r#"{"text":"a\"\\\/\b\f\n\r\t\u00e9\ud83d\ude00","n":4294967295,"i":-9223372036854775808,
            "list":[],"map":{},"flag":false, "junk": [1.5e3, {"a": [true, null, -0, {}]}, "x"], "maybe": 3}"#;
        let (m, o) = both(ok);
        assert!(m.is_some());
        assert_eq!(m, o);
        let base = r#""text":"","n":1,"i":0,"list":[],"map":{},"flag":true"#;
        for (extra, accepted) in [
            ("", true),
            (r#","maybe":null"#, true),
            (r#","n":2"#, true),
            (r#","n":4294967296"#, false),
            (r#","n":-0"#, false),
            (r#","i":-0"#, true),
            (r#","n":1.0"#, false),
            (r#","n":01"#, false),
            (r#","n":1e2"#, false),
            (r#","i":9223372036854775808"#, false),
            (r#","i":-9223372036854775809"#, false),
            (r#","x":1."#, false),
            (r#","x":1e"#, false),
            (r#","x":-"#, false),
            (r#","x":[1,]"#, false),
            (r#","x":{"a":1,}"#, false),
            (r#","x":[}"#, false),
            (r#","x":{"a"}"#, false),
            (r#","x":"\ud800""#, false),
            (r#","x":"\udc00""#, false),
            (r#","x":"\x""#, false),
            (",\"x\":\"\t\"", false),
            (r#","x":nul"#, false),
            (r#","x":12345678901234567890123"#, true),
            (r#","flag":"true""#, false),
            (r#","text":null"#, false),
            (r#","list":["a",1]"#, false),
            (",", false),
        ] {
            let input = format!("{{{base}{extra}}}");
            let (m, o) = both(&input);
            assert_eq!(m.is_some(), accepted, "{input}");
            assert_eq!(m, o, "{input}");
        }
        for input in
            ["", " ", "{}", "[]", "null", "{\"text\":\"\"", &format!(" {{{base}}} x"), &format!("\n{{{base}}}\t")]
        {
            assert_eq!(both(input).0, both(input).1, "{input}");
        }
        let deep = "[".repeat(100_000);
        assert_eq!(from_slice::<Sample>(format!("{{{base},\"x\":{deep}").as_bytes()), Err(Invalid));
    }
}
