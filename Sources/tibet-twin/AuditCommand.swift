#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import Appliance
import Crypto
import Foundation
import TibetTwin

/// `tibet-twin audit …`: verify and read the TIBET audit chain (docs/audit.md, docs/cli.md).
struct AuditCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "audit",
        abstract: "Verify and read the signed, hash-chained audit trail.",
        subcommands: [AuditVerifyCommand.self, AuditShowCommand.self, AuditLoadCommand.self]
    )
}

struct AuditVerifyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify",
        abstract: "Check every hash, link and signature of an audit directory.",
        discussion: """
            Prints one line: the summary (tokens, segments, first and last time, head, keys), or \
            the first failing FILE:LINE: what failed (parse, hash, link, signature, key, segment, torn).
            Each `started` token announces the key that signs from there on. Without --key the \
            first key is trusted and every key is listed: check each is this appliance's. With \
            --key (repeat it for keys used before a rotation) any other key fails.
            Exit codes: 0 the chain verifies, 1 it does not, 2 bad input (unreadable directory \
            or key file).
            """
    )

    @Argument(help: "The audit directory (audit.dir of tibet-twin.yaml).")
    var dir: String

    @Option(name: .customLong("key"), help: "A public key file (keygen's OUT.pub) to pin; repeatable.")
    var keys: [String] = []

    func run() throws {
        var pinned: [Curve25519.Signing.PublicKey] = []
        for path in keys {
            guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
                auditCommandError("\(path): cannot read the public key file")
                throw ExitCode(2)
            }
            do { pinned.append(try KeyText.publicKey(from: text)) } catch {
                auditCommandError("\(path): not an Ed25519 public key: \(error)")
                throw ExitCode(2)
            }
        }
        let verdict: AuditDirectory.Verdict
        do { verdict = try AuditDirectory.verify(dir, pinnedKeys: pinned) } catch {
            auditCommandError("\(error)")
            throw ExitCode(2)
        }
        switch verdict {
        case .success(let summary):
            var line = summary.text
            if let torn = try? AuditDirectory.tornFiles(dir), !torn.isEmpty {
                line += "; \(torn.count) torn tail\(torn.count == 1 ? "" : "s") kept aside (\(torn.joined(separator: ", ")))"
            }
            print(line)
        case .failure(let failure):
            print(failure.description)
            throw ExitCode(1)
        }
    }
}

struct AuditShowCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "show",
        abstract: "Print the audit trail for people, one token a line.",
        discussion: """
            Decisions read like `2026-11-26 14:32:01.021Z crane-01 move_left INHIBIT BLOCKED: status \
            mismatch: physical=fault, twin=operational` (times in UTC). --json prints the tokens \
            as stored, one JSON object a line. Does not verify: run `audit verify` for that.
            Exit codes: 0 printed, 2 bad input (unreadable directory, bad --since).
            """
    )

    @Argument(help: "The audit directory.")
    var dir: String

    @Option(help: "Only tokens about this device.")
    var device: String?

    @Option(help: "Only tokens at or after this time (RFC 3339, e.g. 2026-11-26T14:30:00Z).")
    var since: String?

    @Option(help: "Only tokens with this action (permit_changed, started, checkpoint, …).")
    var action: String?

    @Flag(help: "Print the stored token lines (JSON) instead of text.")
    var json = false

    func run() throws {
        var filter = AuditText.Filter(device: device, action: action)
        if let since {
            guard let ns = RFC3339.parse(since) else {
                auditCommandError("--since: \"\(since)\" is not an RFC 3339 time (e.g. 2026-11-26T14:30:00Z)")
                throw ExitCode(2)
            }
            filter.sinceNs = ns
        }
        let tokens: [(file: String, line: Int, token: TibetToken, text: String)]
        do {
            tokens = try AuditDirectory.tokens(dir, filter: filter) { file, line, why in
                auditCommandError("\(file):\(line): skipped: \(why)")
            }
        } catch {
            auditCommandError("\(error)")
            throw ExitCode(2)
        }
        for t in tokens {
            print(json ? t.text : AuditText.line(t.token))
        }
    }
}

/// Hidden: a load generator over the audit store for the crash and disk-full tests. Prints
/// `acked <token id>` after each durable acknowledgement, `failed <error>`, `health 0|1`, and
/// reads commands on stdin: `unlimit` lifts `--fsize-limit`; `quit` or end of input closes the
/// store and exits 0.
struct AuditLoadCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "_load", abstract: "Test helper: append audit tokens under load.", shouldDisplay: false)

    @Argument var dir: String
    @Option var key: String
    @Option var node = "load"
    /// Records to submit in all; 0 opens (repairs) and closes; -1 runs until quit or killed.
    @Option var count = -1
    @Option var threads = 4
    @Option var segmentBytes = 8 << 20
    /// `audit.retain.max_bytes` for this store (none: keep everything).
    @Option var retainMaxBytes: Int?
    @Option var retryMs = 50
    /// RLIMIT_FSIZE for this process (SIGXFSZ ignored, so writes past it fail with EFBIG).
    @Option var fsizeLimit: Int?
    @Flag var readStdin = false

    func run() throws {
        if let limit = fsizeLimit {
            signal(SIGXFSZ, SIG_IGN)
            setFileSizeLimit(rlim_t(limit))
        }
        let config = AuditStore.Configuration(directory: dir, keyPath: key, node: node, segmentBytes: segmentBytes,
                                              retryIntervalMs: retryMs, retainMaxBytes: retainMaxBytes)
        let store: AuditStore
        do {
            store = try AuditStore.open(config, onHealthChange: { healthy in
                loadOut("health \(healthy ? 1 : 0)")
            })
        } catch {
            auditCommandError("\(error)")
            throw ExitCode(2)
        }
        loadOut("opened \(store.stats.headId ?? "-")")
        let stop = LoadFlag()
        if readStdin {
            let reader = Thread {
                while let line = readLine() {
                    if line == "unlimit" {
                        setFileSizeLimit(nil)
                        loadOut("unlimited")
                    } else if line == "quit" {
                        break
                    }
                }
                stop.set()
            }
            reader.start()
        }
        let remaining = LoadCounter(count)
        let done = DispatchGroup()
        for t in 0..<(count == 0 ? 0 : threads) {
            done.enter()
            let th = Thread {
                var seq = 0
                while !stop.isSet, remaining.take() {
                    seq += 1
                    let time = SystemTimeSource().now()
                    let erin: JSONValue = ["device": .string("load-\(t)"), "intent": "move", "seq": .int(Int64(seq))]
                    if seq % 4 == 0 {
                        // A gating record: wait for it, like a permit rise.
                        let sem = DispatchSemaphore(value: 0)
                        store.submit(AuditRecord(action: .permitChanged, erin: erin, time: time, timing: .gating)) { ack in
                            loadOut(ack.isDurable ? "acked \(ack.tokenId!)" : "failed \(ack.error!)")
                            sem.signal()
                        }
                        sem.wait()
                        if !store.isHealthy { usleep(10_000) }
                    } else {
                        store.submit(AuditRecord(action: .check, erin: erin, time: time, timing: .reporting)) { ack in
                            loadOut(ack.isDurable ? "acked \(ack.tokenId!)" : "failed \(ack.error!)")
                        }
                    }
                }
                done.leave()
            }
            th.start()
        }
        done.wait()
        if readStdin && count >= 0 {
            while !stop.isSet { usleep(10_000) }
        }
        store.close(reason: "load test done")
        loadOut("closed \(store.stats.headId ?? "-")")
    }
}

/// Sets the soft RLIMIT_FSIZE (nil: as high as the hard limit allows).
private func setFileSizeLimit(_ bytes: rlim_t?) {
    let resource = __rlimit_resource_t(RLIMIT_FSIZE.rawValue)
    var rl = rlimit()
    getrlimit(resource, &rl)
    rl.rlim_cur = bytes ?? rl.rlim_max
    setrlimit(resource, &rl)
}

/// One line to stdout in one write(2), so lines from several threads never interleave and a
/// SIGKILL leaves whole lines behind.
private func loadOut(_ s: String) {
    CLIOut.write(1, s + "\n")
}

/// One line to stderr.
private func auditCommandError(_ s: String) {
    CLIOut.error(s)
}

private final class LoadFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var value = false
    var isSet: Bool { lock.lock(); defer { lock.unlock() }; return value }
    func set() { lock.lock(); value = true; lock.unlock() }
}

private final class LoadCounter: @unchecked Sendable {
    private let lock = NSLock()
    private var left: Int
    init(_ n: Int) { left = n }
    /// Takes one; unlimited when started negative.
    func take() -> Bool {
        lock.lock(); defer { lock.unlock() }
        if left < 0 { return true }
        if left == 0 { return false }
        left -= 1
        return true
    }
}
