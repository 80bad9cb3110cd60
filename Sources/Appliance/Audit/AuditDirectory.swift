#if canImport(Glibc)
import Glibc
#endif
import Crypto
import Dispatch
import Foundation
import Synchronization
import TibetTwin
import Platform

/// Reading an audit directory: `tibet-twin audit verify` and `audit show`. Read-only; safe to
/// run while the appliance writes (a line being written at that moment shows up as torn).
package enum AuditDirectory {
    /// The result of verifying a directory: the summary, or the first failure.
    package typealias Verdict = Result<ChainVerifier.Summary, ChainVerifier.Failure>

    /// Verifies every segment of `dir` in order (hash, link, signature, numbering), with
    /// `pinnedKeys` if given. Throws only when the directory cannot be read (or holds no
    /// segment); what is wrong with the chain is in the `Verdict`. File names in failures are
    /// `dir/tibet-<n>.jsonl`.
    package static func verify(_ dir: String, pinnedKeys: [Curve25519.Signing.PublicKey] = []) throws(AuditError) -> Verdict {
        let numbers = try AuditFS.segmentNumbers(in: dir)
        guard !numbers.isEmpty else {
            throw AuditError(.directory, function: "verify", path: dir, detail: "no audit segments (tibet-<n>.jsonl) here")
        }
        var v = ChainVerifier(pinnedKeys: pinnedKeys)
        if let first = numbers.first, first != 1, let resumed = try afterCut(dir, numbers: numbers, pinnedKeys: pinnedKeys) {
            v = resumed
        }
        v.deferSignatures = true
        for n in numbers {
            let path = AuditFS.join(dir, AuditSegment.name(n))
            let bytes = try readSegment(path)
            // Everything but the signatures in order (they depend on the line before); then the
            // segment's signatures on every core. The first failure by line wins, as if checked
            // one line at a time.
            var sequential: ChainVerifier.Failure?
            do throws(ChainVerifier.Failure) {
                try v.beginSegment(file: path, number: n)
                let (lines, rest) = ChainVerifier.split(bytes)
                for (i, l) in lines.enumerated() { try v.verify(line: l, number: i + 1) }
                if !rest.isEmpty { throw v.unterminated(line: lines.count + 1, bytes: rest.count, lastSegment: n == numbers.last) }
            } catch {
                sequential = error
            }
            if let bad = firstBadSignature(v.takePendingSignatures()) { return .failure(bad) }
            if let sequential { return .failure(sequential) }
        }
        if v.summary.tokens == 0 {
            return .failure(.init(file: AuditFS.join(dir, AuditSegment.name(numbers.last!)), line: 1, kind: .parse,
                                  detail: "the segments hold no token"))
        }
        return .success(v.summary)
    }

    /// The verifier for a directory whose first segment is not 1: segments removed by
    /// `audit.retain`. Only a signed `audit_retained` record in the kept segments that names the
    /// segment before the first kept one and the token the first kept token links to vouches for
    /// the gap; nil otherwise (the plain verifier then fails with `segment`: loss or tampering).
    static func afterCut(_ dir: String, numbers: [Int], pinnedKeys: [Curve25519.Signing.PublicKey]) throws(AuditError) -> ChainVerifier? {
        guard let firstNumber = numbers.first else { return nil }
        let firstLines = ChainVerifier.split(try readSegment(AuditFS.join(dir, AuditSegment.name(firstNumber)))).lines
        guard let line = firstLines.first, let first = AuditTail.parseToken(line),
              let parent = first.parentId, let prevHash = first.prevHash else { return nil }
        let prefix = Array(#"{"action":"audit_retained","#.utf8)
        for n in numbers.reversed() {
            let lines = n == firstNumber ? firstLines
                : ChainVerifier.split(try readSegment(AuditFS.join(dir, AuditSegment.name(n)))).lines
            for l in lines.reversed() where l.starts(with: prefix) {
                guard let record = AuditTail.parseToken(l),
                      let key = ChainVerifier.vouchedCutKey(record, segment: firstNumber - 1, parentId: parent,
                                                            prevHash: prevHash, pinnedKeys: pinnedKeys) else { continue }
                var v = ChainVerifier(resumingAfter: parent, previousHash: prevHash, signingKey: key, pinnedKeys: pinnedKeys)
                v.noteCut("kept chain starts at \(AuditSegment.name(firstNumber)) after \(parent), removed by retention (vouched by \(record.tokenId) in \(AuditSegment.name(n)))")
                return v
            }
        }
        return nil
    }

    /// The torn tails moved aside in `dir` (`*.torn`), for the summary.
    package static func tornFiles(_ dir: String) throws(AuditError) -> [String] {
        try AuditFS.names(in: dir, suffix: ".torn")
    }

    /// Every token of `dir` in chain order that parses and matches `filter`, with its file
    /// and line. Lines that are not tokens are reported through `skipped` and left out.
    /// Does not verify: run `verify` for that.
    package static func tokens(_ dir: String, filter: AuditText.Filter = AuditText.Filter(),
                              skipped: (String, Int, String) -> Void = { _, _, _ in }) throws(AuditError)
        -> [(file: String, line: Int, token: TibetToken, text: String)]
    {
        let numbers = try AuditFS.segmentNumbers(in: dir)
        guard !numbers.isEmpty else {
            throw AuditError(.directory, function: "show", path: dir, detail: "no audit segments (tibet-<n>.jsonl) here")
        }
        var out: [(String, Int, TibetToken, String)] = []
        for n in numbers {
            let path = AuditFS.join(dir, AuditSegment.name(n))
            let (lines, rest) = ChainVerifier.split(try readSegment(path))
            for (i, l) in lines.enumerated() {
                let text = String(decoding: l, as: UTF8.self)
                let json: JSONValue
                do { json = try JSONParser.parse(text) } catch {
                    skipped(path, i + 1, "not JSON: \(error)")
                    continue
                }
                do {
                    let t = try TibetToken(json: json)
                    if filter.matches(t) { out.append((path, i + 1, t, text)) }
                } catch {
                    skipped(path, i + 1, "not a token: \(error)")
                }
            }
            if !rest.isEmpty { skipped(path, lines.count + 1, "incomplete last line (\(rest.count) bytes)") }
        }
        return out
    }

    /// The earliest failing signature, checked in parallel chunks.
    static func firstBadSignature(_ pending: [ChainVerifier.PendingSignature]) -> ChainVerifier.Failure? {
        guard !pending.isEmpty else { return nil }
        let chunks = min(pending.count, max(1, ProcessInfo.processInfo.activeProcessorCount) * 4)
        let size = (pending.count + chunks - 1) / chunks
        let firstBad = Mutex<Int>(Int.max)
        DispatchQueue.concurrentPerform(iterations: chunks) { c in
            let lo = c * size
            let hi = min(pending.count, lo + size)
            guard lo < hi else { return }
            for i in lo..<hi {
                if i >= firstBad.withLock({ $0 }) { return }  // an earlier one failed already
                if pending[i].check() != nil {
                    firstBad.withLock { $0 = min($0, i) }
                    return
                }
            }
        }
        let i = firstBad.withLock { $0 }
        return i == Int.max ? nil : pending[i].check()
    }

    static func readSegment(_ path: String) throws(AuditError) -> [UInt8] {
        try AuditFS.readAll(path)
    }
}
