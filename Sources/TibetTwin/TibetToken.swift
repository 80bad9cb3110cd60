import Crypto

/// What a token records (docs/audit.md `action`). Open for additions; none renamed.
public struct TokenAction: RawRepresentable, Sendable, Hashable, CustomStringConvertible {
    public var rawValue: String
    public init(rawValue: String) { self.rawValue = rawValue }
    public var description: String { rawValue }

    public static let permitChanged = TokenAction(rawValue: "permit_changed")
    public static let check = TokenAction(rawValue: "check")
    public static let writeRejected = TokenAction(rawValue: "write_rejected")
    public static let clientRefused = TokenAction(rawValue: "client_refused")
    public static let identityFailed = TokenAction(rawValue: "identity_failed")
    public static let configLoaded = TokenAction(rawValue: "config_loaded")
    public static let checkpoint = TokenAction(rawValue: "checkpoint")
    public static let reset = TokenAction(rawValue: "reset")
    public static let started = TokenAction(rawValue: "started")
    public static let stopped = TokenAction(rawValue: "stopped")
    /// The audit store could write again after a failed write or fsync (ERIN: when it failed,
    /// why, how many tokens were refused and held meanwhile). Not in the original TIBET action list (docs/audit.md): added so
    /// the outage itself is on the record.
    public static let auditRecovered = TokenAction(rawValue: "audit_recovered")
    /// `audit.retain` removed old segments: the signed record of the cut (docs/audit.md).
    public static let auditRetained = TokenAction(rawValue: "audit_retained")
    /// A device's twin `seq` count restarted after a silence (`TwinValidator`, docs/twin-feed.md):
    /// the old and new `seq`, the silence and the two `ts`. Not in the original TIBET action list.
    public static let twinSeqReset = TokenAction(rawValue: "twin_seq_reset")
}

/// A TIBET token (docs/audit.md): ERIN (what was decided), ERAAN (what it is attached to),
/// EROMHEEN (the circumstances), ERACHTER (the intent behind it), hash-linked to its parent.
///
/// `contentHash` is SHA-256 (hex) of the canonical JSON of every other field except
/// `signature`; `signature` is Ed25519 over the hex `contentHash` bytes, base64, added by the
/// audit writer (the pure core does not hold keys).
public struct TibetToken: Sendable, Hashable {
    public var tokenId: String
    public var action: TokenAction
    /// RFC 3339 UTC.
    public var timestamp: String
    /// `jis:<node>`.
    public var actor: String
    public var erin: JSONValue
    public var eraan: JSONValue
    public var eromheen: JSONValue
    public var erachter: JSONValue
    public var parentId: String?
    public var prevHash: String?
    public var contentHash: String
    public var signature: String?

    public init(tokenId: String, action: TokenAction, timestamp: String, actor: String,
                erin: JSONValue, eraan: JSONValue, eromheen: JSONValue, erachter: JSONValue,
                parentId: String?, prevHash: String?, signature: String? = nil) {
        self.tokenId = tokenId
        self.action = action
        self.timestamp = timestamp
        self.actor = actor
        self.erin = erin
        self.eraan = eraan
        self.eromheen = eromheen
        self.erachter = erachter
        self.parentId = parentId
        self.prevHash = prevHash
        self.contentHash = ""
        self.signature = signature
        self.contentHash = computeContentHash()
    }

    /// The fields the content hash covers: all but `content_hash` and `signature`.
    public var hashedFields: [String: JSONValue] {
        [
            "token_id": .string(tokenId),
            "action": .string(action.rawValue),
            "timestamp": .string(timestamp),
            "actor": .string(actor),
            "erin": erin,
            "eraan": eraan,
            "eromheen": eromheen,
            "erachter": erachter,
            "parent_id": parentId.map { .string($0) } ?? .null,
            "prev_hash": prevHash.map { .string($0) } ?? .null,
        ]
    }

    /// SHA-256 (lowercase hex) of the canonical JSON of `hashedFields`.
    public func computeContentHash() -> String {
        Hex.encode(SHA256.hash(data: hashedBytes))
    }

    /// The canonical JSON of `hashedFields` as UTF-8: the bytes `contentHash` covers. Written
    /// member by member in the canonical key order, without building the dictionary.
    public var hashedBytes: [UInt8] { serialized(withHashAndSignature: false) }

    /// The audit line as UTF-8 (no newline): `json.canonical`, written directly.
    public var lineBytes: [UInt8] { serialized(withHashAndSignature: true) }

    /// The top-level members in canonical (sorted) order: action, actor, content_hash, eraan,
    /// erachter, erin, eromheen, parent_id, prev_hash, signature, timestamp, token_id.
    private func serialized(withHashAndSignature full: Bool) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(1024)
        func member(_ key: StaticString, first: Bool = false) {
            if !first { out.append(0x2C) }
            out.append(0x22)
            out.append(contentsOf: UnsafeBufferPointer(start: key.utf8Start, count: key.utf8CodeUnitCount))
            out.append(contentsOf: [0x22, 0x3A])
        }
        func optional(_ v: String?) {
            if let v { JSONValue.writeString(v, bytes: &out) } else { out.append(contentsOf: [0x6E, 0x75, 0x6C, 0x6C]) }
        }
        out.append(0x7B)
        member("action", first: true); JSONValue.writeString(action.rawValue, bytes: &out)
        member("actor"); JSONValue.writeString(actor, bytes: &out)
        if full { member("content_hash"); JSONValue.writeString(contentHash, bytes: &out) }
        member("eraan"); eraan.write(bytes: &out)
        member("erachter"); erachter.write(bytes: &out)
        member("erin"); erin.write(bytes: &out)
        member("eromheen"); eromheen.write(bytes: &out)
        member("parent_id"); optional(parentId)
        member("prev_hash"); optional(prevHash)
        if full { member("signature"); optional(signature) }
        member("timestamp"); JSONValue.writeString(timestamp, bytes: &out)
        member("token_id"); JSONValue.writeString(tokenId, bytes: &out)
        out.append(0x7D)
        return out
    }

    /// The whole token as one canonical JSON object, the form written to the audit file.
    public var json: JSONValue {
        var f = hashedFields
        f["content_hash"] = .string(contentHash)
        f["signature"] = signature.map { .string($0) } ?? .null
        return .object(f)
    }

    /// One audit line (no newline).
    public var line: String { String(decoding: lineBytes, as: UTF8.self) }

    /// Reads a token back from its JSON object. The stored `content_hash` is kept as written,
    /// not recomputed: verification compares it with `computeContentHash()`.
    public init(json: JSONValue) throws(TokenFormatError) {
        guard case .object(let o) = json else { throw TokenFormatError(field: "", problem: "not a JSON object") }
        func str(_ k: String) throws(TokenFormatError) -> String {
            guard let v = o[k]?.stringValue else { throw TokenFormatError(field: k, problem: "missing or not a string") }
            return v
        }
        func optStr(_ k: String) throws(TokenFormatError) -> String? {
            switch o[k] {
            case .none, .some(.null): return nil
            case .some(.string(let s)): return s
            default: throw TokenFormatError(field: k, problem: "not a string or null")
            }
        }
        func obj(_ k: String) throws(TokenFormatError) -> JSONValue {
            guard let v = o[k] else { throw TokenFormatError(field: k, problem: "missing") }
            return v
        }
        let known: Set<String> = ["token_id", "action", "timestamp", "actor", "erin", "eraan", "eromheen",
                                  "erachter", "parent_id", "prev_hash", "content_hash", "signature"]
        if let extra = o.keys.first(where: { !known.contains($0) }) {
            throw TokenFormatError(field: extra, problem: "unknown field")
        }
        tokenId = try str("token_id")
        action = TokenAction(rawValue: try str("action"))
        timestamp = try str("timestamp")
        actor = try str("actor")
        erin = try obj("erin")
        eraan = try obj("eraan")
        eromheen = try obj("eromheen")
        erachter = try obj("erachter")
        parentId = try optStr("parent_id")
        prevHash = try optStr("prev_hash")
        contentHash = try str("content_hash")
        signature = try optStr("signature")
    }
}

/// A token line that is JSON but not a token.
public struct TokenFormatError: Error, Sendable, Hashable, CustomStringConvertible {
    public var field: String
    public var problem: String
    public var description: String { field.isEmpty ? problem : "\(field): \(problem)" }
}

/// The head of a hash chain: makes each new token link to the previous one.
public struct TokenChain: Sendable {
    /// The id and content hash of the last token, `nil` for a new chain.
    public private(set) var lastId: String?
    public private(set) var lastHash: String?
    /// Prefix for token ids; ids are `<prefix>-<n>`.
    public let idPrefix: String
    public private(set) var count: UInt64

    public init(idPrefix: String, lastId: String? = nil, lastHash: String? = nil, count: UInt64 = 0) {
        self.idPrefix = idPrefix
        self.lastId = lastId
        self.lastHash = lastHash
        self.count = count
    }

    /// Makes the next token of the chain and moves the head to it.
    public mutating func append(action: TokenAction, wallNs: Int64, actor: String, erin: JSONValue,
                                eraan: JSONValue, eromheen: JSONValue, erachter: JSONValue) -> TibetToken {
        count += 1
        let t = TibetToken(tokenId: "\(idPrefix)-\(count)", action: action,
                           timestamp: RFC3339.format(wallNs: wallNs, fractionDigits: 6), actor: actor,
                           erin: erin, eraan: eraan, eromheen: eromheen, erachter: erachter,
                           parentId: lastId, prevHash: lastHash)
        lastId = t.tokenId
        lastHash = t.contentHash
        return t
    }
}

/// Lowercase hexadecimal.
public enum Hex {
    /// Lowercase hex, two digits a byte.
    public static func encode(_ bytes: some Sequence<UInt8>) -> String {
        let count = bytes.underestimatedCount
        // Written straight into the string's storage (a digest is 32 bytes: no intermediate array).
        if count > 0, let text = bytes.withContiguousStorageIfAvailable({ src in
            String(unsafeUninitializedCapacity: src.count * 2) { dst in
                for (i, b) in src.enumerated() {
                    dst[2 * i] = digit(b >> 4)
                    dst[2 * i + 1] = digit(b & 0xF)
                }
                return src.count * 2
            }
        }) {
            return text
        }
        var out: [UInt8] = []
        out.reserveCapacity(Swift.max(count, 32) * 2)
        for b in bytes { out.append(digit(b >> 4)); out.append(digit(b & 0xF)) }
        return String(decoding: out, as: UTF8.self)
    }

    /// A SHA-256 digest as 64 lowercase hex digits.
    public static func encode(_ digest: SHA256Digest) -> String {
        digest.withUnsafeBytes { raw in encode(raw.bindMemory(to: UInt8.self)) }
    }

    @inline(__always) static func digit(_ n: UInt8) -> UInt8 { n < 10 ? 0x30 &+ n : 0x57 &+ n }  // 0-9, a-f

    public static func decode(_ text: String) -> [UInt8]? {
        let u = Array(text.utf8)
        guard u.count % 2 == 0 else { return nil }
        func nib(_ c: UInt8) -> UInt8? {
            switch c {
            case 48...57: return c - 48
            case 97...102: return c - 87
            case 65...70: return c - 55
            default: return nil
            }
        }
        var out: [UInt8] = []
        out.reserveCapacity(u.count / 2)
        var i = 0
        while i < u.count {
            guard let h = nib(u[i]), let l = nib(u[i + 1]) else { return nil }
            out.append(h << 4 | l)
            i += 2
        }
        return out
    }
}
