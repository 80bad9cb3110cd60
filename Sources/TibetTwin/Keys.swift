import Crypto

/// Ed25519 keys in the project's text form: one line of base64 holding the 32 raw bytes
/// (the private key's seed, or the public key). `tibet-twin keygen OUT` writes `OUT` (private,
/// mode 0600) and `OUT.pub`.
public enum KeyText {
    /// Why a key text did not parse.
    public struct Invalid: Error, Sendable, Hashable, CustomStringConvertible {
        public var reason: String
        public var description: String { reason }
    }

    public static func privateKey(from text: String) throws(Invalid) -> Curve25519.Signing.PrivateKey {
        let raw = try decode(text)
        do { return try Curve25519.Signing.PrivateKey(rawRepresentation: raw) } catch {
            throw Invalid(reason: "not an Ed25519 private key")
        }
    }

    public static func publicKey(from text: String) throws(Invalid) -> Curve25519.Signing.PublicKey {
        let raw = try decode(text)
        do { return try Curve25519.Signing.PublicKey(rawRepresentation: raw) } catch {
            throw Invalid(reason: "not an Ed25519 public key")
        }
    }

    public static func text(of key: Curve25519.Signing.PrivateKey) -> String {
        Base64.encode(Array(key.rawRepresentation)) + "\n"
    }

    public static func text(of key: Curve25519.Signing.PublicKey) -> String {
        Base64.encode(Array(key.rawRepresentation)) + "\n"
    }

    static func decode(_ text: String) throws(Invalid) -> [UInt8] {
        let trimmed = text.split(whereSeparator: { $0 == "\n" || $0 == "\r" || $0 == " " }).first.map(String.init) ?? ""
        guard let raw = Base64.decode(trimmed) else { throw Invalid(reason: "not base64") }
        guard raw.count == 32 else { throw Invalid(reason: "expected 32 bytes, got \(raw.count)") }
        return raw
    }
}

/// Standard base64 (RFC 4648, with padding), without Foundation.
public enum Base64 {
    static let alphabet: [UInt8] = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)
    static let reverse: [Int16] = {
        var r = [Int16](repeating: -1, count: 256)
        for (i, c) in alphabet.enumerated() { r[Int(c)] = Int16(i) }
        return r
    }()

    public static func encode(_ bytes: some Collection<UInt8>) -> String {
        var out: [UInt8] = []
        out.reserveCapacity((bytes.count + 2) / 3 * 4)
        var it = bytes.makeIterator()
        while let a = it.next() {
            let b = it.next(), c = it.next()
            let n = UInt32(a) << 16 | UInt32(b ?? 0) << 8 | UInt32(c ?? 0)
            out.append(alphabet[Int(n >> 18 & 63)])
            out.append(alphabet[Int(n >> 12 & 63)])
            out.append(b == nil ? 61 : alphabet[Int(n >> 6 & 63)])
            out.append(c == nil ? 61 : alphabet[Int(n & 63)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Decodes padded base64; `nil` on any invalid character or length.
    public static func decode(_ text: some StringProtocol) -> [UInt8]? {
        let u = Array(text.utf8)
        guard u.count % 4 == 0 else { return nil }
        var out: [UInt8] = []
        out.reserveCapacity(u.count / 4 * 3)
        var i = 0
        while i < u.count {
            var n: UInt32 = 0
            var pad = 0
            for k in 0..<4 {
                let c = u[i + k]
                if c == 61 {  // '='
                    guard i + 4 == u.count, k >= 2 else { return nil }
                    pad += 1
                    n <<= 6
                } else {
                    guard pad == 0 else { return nil }
                    let v = reverse[Int(c)]
                    guard v >= 0 else { return nil }
                    n = n << 6 | UInt32(v)
                }
            }
            out.append(UInt8(n >> 16 & 0xFF))
            if pad < 2 { out.append(UInt8(n >> 8 & 0xFF)) }
            if pad < 1 { out.append(UInt8(n & 0xFF)) }
            i += 4
        }
        return out
    }
}
