import Crypto

/// Names of the audit directory's files (docs/audit.md): segments `tibet-<n>.jsonl` numbered from 1,
/// and torn tails moved aside as `tibet-<n>.jsonl.<offset>.torn`.
public enum AuditSegment {
    /// `tibet-<n>.jsonl`.
    public static func name(_ number: Int) -> String { "tibet-\(number).jsonl" }

    /// The segment number of a file name, `nil` if it is not exactly `tibet-<n>.jsonl` (n ≥ 1,
    /// no leading zeros).
    public static func number(of name: String) -> Int? {
        guard name.hasPrefix("tibet-"), name.hasSuffix(".jsonl") else { return nil }
        let digits = name.dropFirst(6).dropLast(6)
        guard !digits.isEmpty, digits.count <= 9, digits.first != "0",
              digits.allSatisfy({ $0 >= "0" && $0 <= "9" }) else { return nil }
        return Int(digits)
    }

    /// Where the torn tail found at byte `offset` of segment `number` is moved aside.
    public static func tornName(segment number: Int, offset: Int) -> String { "\(name(number)).\(offset).torn" }
}

/// Verifies a TIBET chain one line at a time (docs/audit.md): every line parses as a token, its
/// `content_hash` matches its content, it links to the line before (`parent_id`, `prev_hash`,
/// across segments), and its signature verifies with the key in effect. Stops at the first
/// failure and names its file and line.
///
/// Keys: each `started` token announces the key that signs it and everything after it in
/// `erin.public_key` (base64 of the 32 raw bytes) and `erin.key_id` (`KeyText.fingerprint`).
/// The started token is signed by the key it announces (proof of possession); its hash link
/// ties it to the chain before it. With no pinned keys the verifier trusts the first key and
/// reports every later key in the summary, so the inspector can check each against the
/// appliance's provisioning records; with pinned keys (`--key`), a started token announcing
/// any other key fails. A token before the first `started` token has no key and fails.
///
/// Pure: the caller reads files and feeds lines (`Appliance.AuditDirectory` does).
public struct ChainVerifier: Sendable {
    /// The first thing wrong with a chain, at a file and 1-based line.
    public struct Failure: Error, Sendable, Hashable, CustomStringConvertible {
        public enum Kind: String, Sendable, Hashable {
            /// Not JSON, not a token, or a field of the wrong form.
            case parse
            /// `content_hash` does not match the content: the line was changed.
            case hash
            /// `parent_id` / `prev_hash` do not name the token before: a line was deleted,
            /// inserted, moved, or a segment cut short.
            case link
            /// The signature is missing or does not verify with the key in effect.
            case signature
            /// No key announced yet, a malformed key, or a key that is not pinned.
            case key
            /// A segment is missing from the numbering.
            case segment
            /// The last segment's last line has no newline: a write cut short (the store moves it
            /// aside on start). In an earlier segment the same is a `link` failure: lost records.
            case torn
        }
        public var file: String
        public var line: Int
        public var kind: Kind
        public var detail: String

        public init(file: String, line: Int, kind: Kind, detail: String) {
            self.file = file
            self.line = line
            self.kind = kind
            self.detail = detail
        }

        /// `audit/tibet-3.jsonl:17: hash: …`
        public var description: String { "\(file):\(line): \(kind.rawValue): \(detail)" }
    }

    /// One signing key and where it took over.
    public struct KeyEpoch: Sendable, Hashable {
        public var fingerprint: String
        /// Base64 of the 32 raw bytes, as `KeyText` writes it.
        public var publicKey: String
        public var file: String
        public var line: Int
    }

    /// What a verified chain holds.
    public struct Summary: Sendable, Hashable {
        public var tokens = 0
        public var segments = 0
        /// `timestamp` of the first and the last token.
        public var firstTime: String?
        public var lastTime: String?
        public var headId: String?
        public var headHash: String?
        /// Every key that signed, in order of taking over.
        public var keys: [KeyEpoch] = []
        /// Whether keys were pinned (`--key`), so every key above is a pinned one.
        public var pinned = false
        /// Number of `started` tokens (appliance starts), and of those recording a torn-tail repair.
        public var starts = 0
        public var repairs = 0
        public var lastAction: String?
        /// Where the kept chain starts after a retention cut, and the record vouching for it.
        public var cut: String?

        /// The one-line summary `audit verify` prints.
        public var text: String {
            var s = "ok: \(tokens) token\(tokens == 1 ? "" : "s") in \(segments) segment\(segments == 1 ? "" : "s")"
            if let f = firstTime, let l = lastTime { s += ", \(f) … \(l)" }
            if let h = headId, let hh = headHash { s += "; head \(h) \(hh.prefix(16))" }
            if let a = lastAction, a != TokenAction.stopped.rawValue { s += " (last: \(a), no stop since)" }
            s += "; \(starts) start\(starts == 1 ? "" : "s")"
            if repairs > 0 { s += ", \(repairs) torn-tail repair\(repairs == 1 ? "" : "s")" }
            if let cut { s += "; \(cut)" }
            let ks = keys.map { "\($0.fingerprint) from \($0.file):\($0.line)" }.joined(separator: ", ")
            s += "; key\(keys.count == 1 ? "" : "s") \(ks)"
            s += pinned ? " (pinned)" : " (not pinned: check \(keys.count == 1 ? "it is" : "each is") this appliance's key, or pass --key)"
            return s
        }
    }

    /// A signature check left for later (`deferSignatures`): everything else about the line
    /// passed. Independent of every other line, so a caller may check them on several cores.
    public struct PendingSignature: Sendable {
        public var file: String
        public var line: Int
        public var tokenId: String
        public var keyRaw: [UInt8]
        public var fingerprint: String
        public var message: [UInt8]
        public var signature: String?

        /// The failure this signature is, or nil when it verifies.
        public func check() -> Failure? {
            let fail = { (d: String) in Failure(file: file, line: line, kind: .signature, detail: d) }
            guard let signature else { return fail("token \(tokenId) is not signed") }
            guard let raw = Base64.decode(signature), raw.count == 64, let key = ChainVerifier.key(raw: keyRaw),
                  key.isValidSignature(raw, for: message) else {
                return fail("token \(tokenId): signature does not verify with key \(fingerprint)")
            }
            return nil
        }
    }

    private let pinnedRaw: [[UInt8]]
    private let checkSignatures: Bool
    /// Collect signature checks in `pendingSignatures` instead of doing them in `verify`.
    public var deferSignatures = false
    public private(set) var pendingSignatures: [PendingSignature] = []
    private var lastId: String?
    private var lastHash: String?
    /// Whether the chain has a predecessor (a first token, or a resumed position).
    private var inChain: Bool
    /// The key in effect, as raw bytes (swift-crypto's key type is not `Sendable`).
    private var keyRaw: [UInt8]?
    private var keyFingerprint: String?
    private var lastSegment: Int?
    /// Whole chains start at segment 1; a resumed tail starts wherever it is.
    private let firstSegmentMustBeOne: Bool
    private var file = ""
    public private(set) var summary = Summary()

    /// A verifier for a whole chain, from its first line.
    public init(pinnedKeys: [Curve25519.Signing.PublicKey] = [], checkSignatures: Bool = true) {
        pinnedRaw = pinnedKeys.map { Array($0.rawRepresentation) }
        self.checkSignatures = checkSignatures
        inChain = false
        firstSegmentMustBeOne = true
        summary.pinned = !pinnedKeys.isEmpty
    }

    /// A verifier for the tail of a chain: the lines after the token `previousId` /
    /// `previousHash`, signed by `signingKey` until a `started` token says otherwise. The
    /// audit store checks the tail it is about to extend this way. Segment numbering starts
    /// wherever the first `beginSegment` says.
    public init(resumingAfter previousId: String?, previousHash: String?,
                signingKey: Curve25519.Signing.PublicKey?, checkSignatures: Bool = true,
                pinnedKeys: [Curve25519.Signing.PublicKey] = []) {
        pinnedRaw = pinnedKeys.map { Array($0.rawRepresentation) }
        summary.pinned = !pinnedKeys.isEmpty
        self.checkSignatures = checkSignatures
        lastId = previousId
        lastHash = previousHash
        inChain = previousId != nil
        firstSegmentMustBeOne = false
        keyRaw = signingKey.map { Array($0.rawRepresentation) }
        keyFingerprint = signingKey.map { KeyText.fingerprint(of: $0) }
    }

    /// The key that signs the next token (the last one announced).
    public var currentKey: Curve25519.Signing.PublicKey? { keyRaw.flatMap(Self.key(raw:)) }

    static func key(raw: [UInt8]) -> Curve25519.Signing.PublicKey? {
        try? Curve25519.Signing.PublicKey(rawRepresentation: raw)
    }

    /// Starts the next segment file. Segments must be numbered 1, 2, 3 … without a gap.
    public mutating func beginSegment(file: String, number: Int) throws(Failure) {
        self.file = file
        if let last = lastSegment {
            guard number == last + 1 else {
                let missing = number - last == 2 ? AuditSegment.name(last + 1)
                    : "\(AuditSegment.name(last + 1)) … \(AuditSegment.name(number - 1))"
                throw Failure(file: file, line: 1, kind: .segment,
                              detail: "\(missing) missing (the segment before this one is \(AuditSegment.name(last)))")
            }
        } else if firstSegmentMustBeOne && number != 1 {
            throw Failure(file: file, line: 1, kind: .segment,
                          detail: "the chain's first segment is \(AuditSegment.name(1)), but the first one here is \(AuditSegment.name(number)) (earlier segments removed?)")
        }
        lastSegment = number
        summary.segments += 1
    }

    /// The failure for an unterminated last line at `line` of the current segment.
    public func tornTail(line: Int, bytes: Int) -> Failure {
        Failure(file: file, line: line, kind: .torn,
                detail: "last line is incomplete (\(bytes) bytes without a newline): a write cut short; the audit store moves it aside into a .torn file when it next opens the directory")
    }

    /// The failure for an unterminated last line at `line` of a segment that is not the last
    /// one. The store only ever repairs the tail of the last segment (it never writes to an
    /// earlier one again), so bytes without a newline there are not a crash: records after
    /// them were lost, or the file was changed.
    public func cutSegment(line: Int, bytes: Int) -> Failure {
        Failure(file: file, line: line, kind: .link,
                detail: "ends in \(bytes) bytes without a newline, but it is not the last segment: the audit store never "
                    + "writes to an earlier segment again, so records were lost here or the file was tampered with (it is not repaired)")
    }

    /// `tornTail` for the last segment, `cutSegment` for any other.
    public func unterminated(line: Int, bytes: Int, lastSegment: Bool) -> Failure {
        lastSegment ? tornTail(line: line, bytes: bytes) : cutSegment(line: line, bytes: bytes)
    }

    /// Verifies the next line (without its newline) and returns its token.
    @discardableResult
    public mutating func verify(line bytes: some Collection<UInt8>, number: Int) throws(Failure) -> TibetToken {
        func fail(_ kind: Failure.Kind, _ detail: String) -> Failure {
            Failure(file: file, line: number, kind: kind, detail: detail)
        }
        let array = Array(bytes)
        let parsed: Result<JSONValue, JSONParseError> = array.withUnsafeBufferPointer { buf in
            Result { () throws(JSONParseError) in try JSONParser.parse(bytes: buf) }
        }
        let json: JSONValue
        switch parsed {
        case .success(let v): json = v
        case .failure(let e): throw fail(.parse, array.isEmpty ? "empty line" : "not JSON: \(e)")
        }
        let token: TibetToken
        do { token = try TibetToken(json: json) } catch { throw fail(.parse, "not a token: \(error)") }
        guard RFC3339.parse(token.timestamp) != nil else {
            throw fail(.parse, "timestamp: \"\(token.timestamp)\" is not RFC 3339")
        }
        let recomputed = token.computeContentHash()
        guard recomputed == token.contentHash else {
            throw fail(.hash, "token \(token.tokenId): content_hash \(token.contentHash.prefix(16))… does not match its content (recomputed \(recomputed.prefix(16))…): the line was changed")
        }
        if inChain {
            guard let parent = token.parentId else {
                var why = "parent_id is null in the middle of the chain"
                if let reason = token.erin["new_chain"]?["reason"]?.stringValue {
                    why += " (a new chain starts here because: \(reason))"
                }
                throw fail(.link, "token \(token.tokenId): " + why)
            }
            guard parent == lastId else {
                throw fail(.link, "token \(token.tokenId) names parent \(parent), but the token before it is \(lastId ?? "none"): a token was deleted, inserted or moved here")
            }
            guard token.prevHash == lastHash else {
                throw fail(.link, "token \(token.tokenId): prev_hash \((token.prevHash ?? "null").prefix(16))… is not the content_hash of \(lastId ?? "the token before") (\((lastHash ?? "null").prefix(16))…)")
            }
        } else if token.parentId != nil || token.prevHash != nil {
            throw fail(.link, "token \(token.tokenId) is the first of the chain but names parent \(token.parentId ?? "null"): the tokens before it are missing")
        }
        var signer = keyRaw.flatMap(Self.key(raw:))
        var signerFingerprint = keyFingerprint
        if token.action == .started {
            guard let text = token.erin["public_key"]?.stringValue else {
                throw fail(.key, "started token \(token.tokenId) announces no erin.public_key")
            }
            let announced: Curve25519.Signing.PublicKey
            do { announced = try KeyText.publicKey(from: text) } catch {
                throw fail(.key, "started token \(token.tokenId): erin.public_key: \(error)")
            }
            let fp = KeyText.fingerprint(of: announced)
            if !pinnedRaw.isEmpty && !pinnedRaw.contains(Array(announced.rawRepresentation)) {
                throw fail(.key, "started token \(token.tokenId) announces key \(fp), which is not a pinned key (--key)")
            }
            signer = announced
            signerFingerprint = fp
        }
        guard let signer, let signerFingerprint else {
            throw fail(.key, "token \(token.tokenId): no signing key announced yet (a chain begins with a started token)")
        }
        if checkSignatures && deferSignatures {
            pendingSignatures.append(PendingSignature(file: file, line: number, tokenId: token.tokenId,
                                                      keyRaw: Array(signer.rawRepresentation), fingerprint: signerFingerprint,
                                                      message: token.signedBytes, signature: token.signature))
        } else if checkSignatures {
            guard token.signature != nil else { throw fail(.signature, "token \(token.tokenId) is not signed") }
            guard token.hasValidSignature(by: signer) else {
                throw fail(.signature, "token \(token.tokenId): signature does not verify with key \(signerFingerprint)")
            }
        }
        // Accepted: move the head.
        if signerFingerprint != keyFingerprint || summary.keys.isEmpty {
            summary.keys.append(KeyEpoch(fingerprint: signerFingerprint,
                                         publicKey: Base64.encode(Array(signer.rawRepresentation)),
                                         file: file, line: number))
        }
        keyRaw = Array(signer.rawRepresentation)
        keyFingerprint = signerFingerprint
        lastId = token.tokenId
        lastHash = token.contentHash
        inChain = true
        summary.tokens += 1
        if summary.firstTime == nil { summary.firstTime = token.timestamp }
        summary.lastTime = token.timestamp
        summary.headId = token.tokenId
        summary.headHash = token.contentHash
        summary.lastAction = token.action.rawValue
        if token.action == .started {
            summary.starts += 1
            if token.erin["repair"] != nil { summary.repairs += 1 }
        }
        return token
    }

    /// A retention cut (`audit_retained`) vouching that segment `segment` is removed and ended
    /// in the token `parentId` / `prevHash`: the record's content hash matches, its
    /// `erin.removed` names exactly that segment and token, and it is signed by the key it
    /// announces (`erin.public_key`), which must be a pinned key when keys are pinned. Returns
    /// the key that signs the first kept token (`erin.kept_key`, the last key announced in the
    /// removed segments, also pinned; else the record's own key), or nil when the record does
    /// not vouch for this cut.
    public static func vouchedCutKey(_ record: TibetToken, segment: Int, parentId: String, prevHash: String,
                                     pinnedKeys: [Curve25519.Signing.PublicKey] = []) -> Curve25519.Signing.PublicKey? {
        guard record.action == .auditRetained, record.computeContentHash() == record.contentHash,
              case .array(let removed)? = record.erin["removed"],
              removed.contains(where: {
                  $0["segment"]?.intValue == Int64(segment) && $0["last_id"]?.stringValue == parentId
                      && $0["last_hash"]?.stringValue == prevHash
              }),
              let text = record.erin["public_key"]?.stringValue,
              let key = try? KeyText.publicKey(from: text),
              record.signature != nil, record.hasValidSignature(by: key) else { return nil }
        func pinned(_ k: Curve25519.Signing.PublicKey) -> Bool {
            pinnedKeys.isEmpty || pinnedKeys.contains(where: { $0.rawRepresentation == k.rawRepresentation })
        }
        guard pinned(key) else { return nil }
        // The key that signed the first kept token (the last one announced in what was
        // removed), when the record names it; else the record's own key.
        if let keptText = record.erin["kept_key"]?.stringValue {
            guard let kept = try? KeyText.publicKey(from: keptText), pinned(kept) else { return nil }
            return kept
        }
        return key
    }

    /// Records in the summary where a retention cut starts the kept chain.
    public mutating func noteCut(_ text: String) { summary.cut = text }

    /// Hands over the signature checks collected so far.
    public mutating func takePendingSignatures() -> [PendingSignature] {
        defer { pendingSignatures = [] }
        return pendingSignatures
    }

    /// Splits a segment's bytes into its newline-terminated lines and the unterminated rest
    /// (empty when the segment ends with a newline).
    public static func split(_ bytes: [UInt8]) -> (lines: [ArraySlice<UInt8>], rest: ArraySlice<UInt8>) {
        var lines: [ArraySlice<UInt8>] = []
        var start = 0
        var i = 0
        let n = bytes.count
        while i < n {
            if bytes[i] == 0x0A {
                lines.append(bytes[start..<i])
                start = i + 1
            }
            i += 1
        }
        return (lines, bytes[start..<n])
    }

    /// Verifies whole segments held in memory, in order (for tests and small chains; the CLI
    /// streams files through `Appliance.AuditDirectory`).
    public static func verify(segments: [(file: String, number: Int, bytes: [UInt8])],
                              pinnedKeys: [Curve25519.Signing.PublicKey] = []) -> Result<Summary, Failure> {
        var v = ChainVerifier(pinnedKeys: pinnedKeys)
        do throws(Failure) {
            for (index, s) in segments.enumerated() {
                try v.beginSegment(file: s.file, number: s.number)
                let (lines, rest) = split(s.bytes)
                for (i, l) in lines.enumerated() { try v.verify(line: l, number: i + 1) }
                if !rest.isEmpty {
                    throw v.unterminated(line: lines.count + 1, bytes: rest.count, lastSegment: index == segments.count - 1)
                }
            }
            if v.summary.tokens == 0 {
                throw Failure(file: segments.last?.file ?? "", line: 0, kind: .parse, detail: "no tokens")
            }
            return .success(v.summary)
        } catch {
            return .failure(error)
        }
    }
}
