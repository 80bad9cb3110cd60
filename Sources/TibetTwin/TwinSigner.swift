import Crypto

/// Why a line could not be signed.
public struct TwinSignError: Error, Sendable, Hashable, CustomStringConvertible {
    public enum Kind: String, Sendable, Hashable {
        /// Not one JSON object (or not valid JSON at all).
        case notAnObject = "not_an_object"
        /// The object has no members: there is nothing to sign (and no place for a last `sig`).
        case empty
        /// The line already has a top-level `sig`.
        case alreadySigned = "already_signed"
        /// The signed line would exceed the feed's 64 KiB line limit.
        case tooLong = "too_long"
        /// The crypto library refused (should not happen with a valid key).
        case crypto
    }

    public var kind: Kind
    public var detail: String

    public init(kind: Kind, detail: String) {
        self.kind = kind
        self.detail = detail
    }

    public var description: String { detail }
}

/// Signs twin feed lines the way the feeds verify them (docs/twin-feed.md): Ed25519 over the exact bytes of the
/// line as given (trailing whitespace and CR removed), then `,"sig":"<base64>"` inserted as the
/// last member before the closing brace. For twin integrators (`tibet-twin sign`) and tests.
public enum TwinLineSigner {
    /// Returns the signed line (no newline). The input must be one JSON object with at least one
    /// member and no `sig`.
    public static func sign(_ line: some Collection<UInt8>, key: Curve25519.Signing.PrivateKey) throws(TwinSignError) -> [UInt8] {
        var bytes = Array(line)
        while let last = bytes.last, last == 0x20 || last == 0x09 || last == 0x0D || last == 0x0A { bytes.removeLast() }
        let parsed: Result<JSONValue, JSONParseError> = bytes.withUnsafeBufferPointer { buf in
            Result { () throws(JSONParseError) in try JSONParser.parse(bytes: buf) }
        }
        guard case .success(let value) = parsed else {
            if case .failure(let e) = parsed { throw TwinSignError(kind: .notAnObject, detail: "not JSON: \(e)") }
            throw TwinSignError(kind: .notAnObject, detail: "not JSON")
        }
        guard case .object(let members) = value else {
            throw TwinSignError(kind: .notAnObject, detail: "not a JSON object")
        }
        guard !members.isEmpty else { throw TwinSignError(kind: .empty, detail: "the object has no members") }
        guard members["sig"] == nil else { throw TwinSignError(kind: .alreadySigned, detail: "the line already has a sig") }
        let signature: String
        do {
            signature = Base64.encode(try key.signature(for: bytes))
        } catch {
            throw TwinSignError(kind: .crypto, detail: "signing failed: \(error)")
        }
        // A valid object's last byte (after trimming) is its closing brace.
        var out = bytes
        out.removeLast()
        out.append(contentsOf: Array(",\"sig\":\"".utf8))
        out.append(contentsOf: Array(signature.utf8))
        out.append(contentsOf: Array("\"}".utf8))
        guard out.count <= TwinLineParser.maxLineBytes else {
            throw TwinSignError(kind: .tooLong, detail: "the signed line has \(out.count) bytes > \(TwinLineParser.maxLineBytes)")
        }
        return out
    }
}
