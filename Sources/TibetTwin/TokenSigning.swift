import Crypto

/// Why a token could not be signed.
public struct TokenSigningError: Error, Sendable, Hashable, CustomStringConvertible {
    public var tokenId: String
    public var reason: String
    public var description: String { "cannot sign token \(tokenId): \(reason)" }
}

extension TibetToken {
    /// The bytes the signature covers: the UTF-8 bytes of the lowercase hex `contentHash`
    /// (docs/audit.md: over the ASCII bytes of the hex `content_hash`). The hash already binds every other field.
    public var signedBytes: [UInt8] { Array(contentHash.utf8) }

    /// Signs the token with the audit key (Ed25519 over `signedBytes`, base64) and stores the
    /// signature in `signature`.
    public mutating func sign(with key: Curve25519.Signing.PrivateKey) throws(TokenSigningError) {
        do {
            signature = Base64.encode(Array(try key.signature(for: signedBytes)))
        } catch {
            throw TokenSigningError(tokenId: tokenId, reason: "\(error)")
        }
    }

    /// Whether `signature` is a valid Ed25519 signature of `signedBytes` by `key`. A missing or
    /// malformed signature is not valid. The content hash itself is not recomputed here.
    public func hasValidSignature(by key: Curve25519.Signing.PublicKey) -> Bool {
        guard let s = signature, let raw = Base64.decode(s), raw.count == 64 else { return false }
        return key.isValidSignature(raw, for: signedBytes)
    }
}

extension KeyText {
    /// A short, stable name for a public key: `ed25519:` and the first 16 hex digits of the
    /// SHA-256 of its 32 raw bytes. Printed by `audit verify`, written into `started` tokens.
    public static func fingerprint(of key: Curve25519.Signing.PublicKey) -> String {
        "ed25519:" + Hex.encode(SHA256.hash(data: key.rawRepresentation).prefix(8))
    }
}
