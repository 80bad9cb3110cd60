#if canImport(Glibc)
import Glibc
#endif
import Crypto
import TibetTwin

/// Crash safety on open: finds where the chain continues, moving a torn last line aside and
/// refusing to extend a tail that does not verify.
enum AuditTail {
    struct Recovered {
        /// The segment to append to.
        var segment: Int
        /// Whether that segment is new (its directory entry must be synced).
        var createdSegment: Bool
        var chain: TokenChain
        /// ERIN members for the `started` token: `resumed`, `repair`, `new_chain`.
        var startInfo: [String: JSONValue]
        /// The key that signed the last token, if the chain is resumed.
        var previousKeyFingerprint: String?
    }

    static func recover(directory dir: String, node: String, window: Int = defaultWindow) throws(AuditError) -> Recovered {
        let numbers = try AuditFS.segmentNumbers(in: dir)
        guard let last = numbers.last else {
            return Recovered(segment: 1, createdSegment: true, chain: TokenChain(idPrefix: node), startInfo: [:],
                             previousKeyFingerprint: nil)
        }
        var info: [String: JSONValue] = [:]
        let lastName = AuditSegment.name(last)
        let lastPath = AuditFS.join(dir, lastName)
        let data = try AuditFS.readAll(lastPath)
        let (lines, rest) = ChainVerifier.split(data)
        if !rest.isEmpty {
            // A write cut short: keep the bytes (never silently dropped), cut the segment back
            // to its last whole line, and say so in the started token.
            let offset = data.count - rest.count
            let tornName = AuditSegment.tornName(segment: last, offset: offset)
            let tornPath = AuditFS.join(dir, tornName)
            let tfd = try AuditFS.open(tornPath, O_WRONLY | O_CREAT | O_TRUNC, mode: 0o640)
            do throws(AuditError) {
                try AuditFS.writeAll(tfd, Array(rest), path: tornPath)
                try AuditFS.sync(tfd, path: tornPath)
            } catch {
                close(tfd)
                throw error
            }
            close(tfd)
            try AuditFS.syncDirectory(dir)
            let sfd = try AuditFS.open(lastPath, O_WRONLY)
            do throws(AuditError) {
                try AuditFS.truncate(sfd, to: offset, path: lastPath)
                try AuditFS.sync(sfd, path: lastPath)
            } catch {
                close(sfd)
                throw error
            }
            close(sfd)
            info["repair"] = [
                "segment": .string(lastName),
                "line": .int(Int64(lines.count + 1)),
                "offset": .int(Int64(offset)),
                "torn_bytes": .int(Int64(rest.count)),
                "torn_sha256": .string(Hex.encode(SHA256.hash(data: Array(rest)))),
                "moved_to": .string(tornName),
            ]
        }

        // The tail: the last segment with lines (an empty last segment is a crash right after
        // a rotation).
        var tailIndex = numbers.count - 1
        var tailLines = lines
        var tailFailure: ChainVerifier.Failure?
        while tailLines.isEmpty && tailIndex > 0 {
            tailIndex -= 1
            let (l, r) = ChainVerifier.split(try AuditFS.readAll(AuditFS.join(dir, AuditSegment.name(numbers[tailIndex]))))
            if !r.isEmpty {
                tailFailure = ChainVerifier.Failure(file: AuditSegment.name(numbers[tailIndex]), line: l.count + 1, kind: .torn,
                                                    detail: "a segment before the last one ends in an incomplete line")
                break
            }
            tailLines = l
        }
        let tailNumber = numbers[tailIndex]
        if tailLines.isEmpty && tailFailure == nil {
            // No token anywhere: a chain starts in the last (empty) segment.
            return Recovered(segment: last, createdSegment: false, chain: TokenChain(idPrefix: node),
                             startInfo: info, previousKeyFingerprint: nil)
        }
        let result: Result<(TibetToken, Curve25519.Signing.PublicKey), ChainVerifier.Failure>
        if let tailFailure {
            result = .failure(tailFailure)
        } else {
            result = verifyTail(dir: dir, numbers: numbers, tailNumber: tailNumber, lines: tailLines, window: window)
        }
        switch result {
        case .success(let (token, key)):
            let count = idNumber(token.tokenId) ?? UInt64(tailLines.count)
            info["resumed"] = [
                "after": .string(token.tokenId),
                "segment": .string(AuditSegment.name(tailNumber)),
                "line": .int(Int64(tailLines.count)),
                // A chain that does not end in `stopped` was left by a crash or power loss.
                "clean_stop": .bool(token.action == .stopped),
            ]
            return Recovered(segment: last, createdSegment: false,
                             chain: TokenChain(idPrefix: node, lastId: token.tokenId, lastHash: token.contentHash, count: count),
                             startInfo: info, previousKeyFingerprint: KeyText.fingerprint(of: key))
        case .failure(let failure):
            var highest: UInt64 = 0
            for l in tailLines {
                if let json = try? JSONParser.parse(String(decoding: l, as: UTF8.self)),
                   let id = json["token_id"]?.stringValue, let n = idNumber(id) {
                    highest = max(highest, n)
                }
            }
            info["new_chain"] = [
                "reason": .string(failure.description),
                "broken_segment": .string(AuditSegment.name(tailNumber)),
            ]
            return Recovered(segment: last + 1, createdSegment: true, chain: TokenChain(idPrefix: node, count: highest),
                             startInfo: info, previousKeyFingerprint: nil)
        }
    }

    /// How many of the last lines the store checks on open (hash and links; the last token's
    /// signature). Enough to never extend a damaged or forged tail, and bounded so a large
    /// segment does not slow the start: the whole chain is `audit verify`'s job.
    static let defaultWindow = 1024

    /// Checks the tail of the last segment with lines: the last `window` lines each parse,
    /// hash and link (the first of them to the token before it — in this segment or the last
    /// line of the previous one — unless it starts a chain), and the last token's signature
    /// verifies with the key in effect (announced by the last `started` token). Earlier
    /// signatures are left to `audit verify`: a forged line before the last one would break
    /// the hash links to it.
    static func verifyTail(dir: String, numbers: [Int], tailNumber: Int, lines: [ArraySlice<UInt8>],
                           window: Int = defaultWindow)
        -> Result<(TibetToken, Curve25519.Signing.PublicKey), ChainVerifier.Failure>
    {
        let file = AuditSegment.name(tailNumber)
        let start = max(0, lines.count - max(1, window))
        let first = parseToken(lines[start])
        var previousId: String?
        var previousHash: String?
        if let first, let parent = first.parentId {
            if start > 0 {
                // The token before the window, in this segment: its own hash must hold.
                guard let p = parseToken(lines[start - 1]), p.computeContentHash() == p.contentHash else {
                    return .failure(.init(file: file, line: start, kind: .hash,
                                          detail: "the token before the checked tail does not parse or its content_hash does not match"))
                }
                previousId = p.tokenId
                previousHash = p.contentHash
            } else {
                let prevNumber = tailNumber - 1
                let prevFile = AuditSegment.name(prevNumber)
                guard prevNumber >= 1, numbers.contains(prevNumber),
                      let (lastLine, lineCount) = try? lastLine(of: AuditFS.join(dir, prevFile)) else {
                    return .failure(.init(file: file, line: 1, kind: .segment,
                                          detail: "\(prevFile) is missing or unreadable, and the first token links to \(parent) in it"))
                }
                guard let lastLine else {
                    return .failure(.init(file: prevFile, line: lineCount, kind: .link,
                                          detail: "the segment before the tail does not end in a whole token"))
                }
                guard let p = parseToken(lastLine[...]) else {
                    return .failure(.init(file: prevFile, line: lineCount, kind: .parse, detail: "not a token"))
                }
                guard p.computeContentHash() == p.contentHash else {
                    return .failure(.init(file: prevFile, line: lineCount, kind: .hash,
                                          detail: "token \(p.tokenId): content_hash does not match its content"))
                }
                previousId = p.tokenId
                previousHash = p.contentHash
            }
        }
        var key: Curve25519.Signing.PublicKey?
        if first?.action != .started {
            key = lastAnnouncedKey(in: lines[0..<start])
                ?? lastAnnouncedKey(dir: dir, numbers: numbers.filter { $0 < tailNumber })
        }
        var v = ChainVerifier(resumingAfter: previousId, previousHash: previousHash, signingKey: key, checkSignatures: false)
        var last: TibetToken?
        do throws(ChainVerifier.Failure) {
            try v.beginSegment(file: file, number: tailNumber)
            for i in start..<lines.count { last = try v.verify(line: lines[i], number: i + 1) }
        } catch {
            return .failure(error)
        }
        guard let last, let k = v.currentKey else {
            return .failure(.init(file: file, line: lines.count, kind: .key, detail: "no signing key announced"))
        }
        guard last.hasValidSignature(by: k) else {
            return .failure(.init(file: file, line: lines.count, kind: .signature,
                                  detail: "token \(last.tokenId): signature does not verify with key \(KeyText.fingerprint(of: k))"))
        }
        return .success((last, k))
    }

    /// The last whole line of a file and its 1-based number (the whole file is read, to count
    /// lines); `nil` line when the file does not end in a newline (or is empty).
    static func lastLine(of path: String) throws(AuditError) -> ([UInt8]?, Int) {
        let data = try AuditFS.readAll(path)
        let (lines, rest) = ChainVerifier.split(data)
        guard rest.isEmpty, let last = lines.last else { return (nil, lines.count + (rest.isEmpty ? 0 : 1)) }
        return (Array(last), lines.count)
    }

    /// The key announced by the last `started` token among `lines` (or by an `audit_retained`
    /// cut record, which announces the key too: after a retention cut the kept segments may
    /// hold no `started` token).
    static func lastAnnouncedKey(in lines: ArraySlice<ArraySlice<UInt8>>) -> Curve25519.Signing.PublicKey? {
        for line in lines.reversed() where line.starts(with: startedPrefix) || line.starts(with: retainedPrefix) {
            if let t = parseToken(line), let text = t.erin["public_key"]?.stringValue {
                return try? KeyText.publicKey(from: text)
            }
            return nil
        }
        return nil
    }

    /// The key announced by the last `started` token in the given segments (searched from the
    /// newest; the canonical form puts `action` first, so a line prefix finds them).
    static func lastAnnouncedKey(dir: String, numbers: [Int]) -> Curve25519.Signing.PublicKey? {
        for n in numbers.reversed() {
            guard let data = try? AuditFS.readAll(AuditFS.join(dir, AuditSegment.name(n))) else { return nil }
            let lines = ChainVerifier.split(data).lines
            if lines.contains(where: { $0.starts(with: startedPrefix) || $0.starts(with: retainedPrefix) }) {
                return lastAnnouncedKey(in: lines[...])
            }
        }
        return nil
    }

    static let startedPrefix = Array(#"{"action":"started","#.utf8)
    static let retainedPrefix = Array(#"{"action":"audit_retained","#.utf8)

    static func parseToken(_ line: ArraySlice<UInt8>) -> TibetToken? {
        guard let json = try? JSONParser.parse(String(decoding: line, as: UTF8.self)) else { return nil }
        return try? TibetToken(json: json)
    }

    /// `guard-01-1234` → 1234.
    static func idNumber(_ id: String) -> UInt64? {
        guard let dash = id.lastIndex(of: "-") else { return nil }
        return UInt64(id[id.index(after: dash)...])
    }
}
