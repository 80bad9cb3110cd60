import Foundation
import Logging
import Testing
@testable import Appliance
import Platform
import TibetTwin
import TestSupport

/// Appends text to a file (creating it), the way a twin writer does.
func append(_ path: String, _ text: String) {
    let fd = open(path, O_WRONLY | O_APPEND | O_CREAT, 0o644)
    precondition(fd >= 0, "open \(path)")
    let bytes = Array(text.utf8)
    _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    close(fd)
}

@Suite("Twin file source", .serialized)
struct TwinFileSourceTests {
    /// Runs `body` with a started file source on a fresh file, stopping it afterwards.
    func withSource(fromStart: Bool = false, prepare: (String) -> Void = { _ in }, logs: LogStore? = nil,
                    _ body: (TwinFileSource, Collector, String) async throws -> Void) async throws {
        let dir = Twin.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/twin.jsonl"
        prepare(path)
        let c = Collector()
        let source = TwinFileSource(path: path, fromStart: fromStart, pipeline: c.feed,
                                    logger: logs?.logger ?? Twin.quiet, pollIntervalMs: 50)
        try await source.start()
        defer { source.stopFollowing() }
        try await body(source, c, path)
    }

    @Test func startsAtTheEndAndPicksUpAppendedLines() async throws {
        try await withSource(prepare: { append($0, Twin.line(seq: 1) + "\n" + Twin.line(seq: 2) + "\n") }) { source, c, path in
            append(path, Twin.line(seq: 3) + "\n" + Twin.line(seq: 4) + "\n")
            #expect(await eventually { c.count == 2 })
            append(path, Twin.line(seq: 5) + "\n")
            #expect(await eventually { c.count == 3 })
            #expect(c.seqs("crane-01") == [3, 4, 5], "old lines are history, not state")
            #expect(source.counters.lines == 3)
            #expect(source.counters.accepted == 3)
        }
    }

    @Test func fromStartReadsExistingLines() async throws {
        try await withSource(fromStart: true, prepare: { append($0, Twin.line(seq: 1) + "\n" + Twin.line(seq: 2) + "\n") }) { _, c, _ in
            #expect(await eventually { c.count == 2 })
            #expect(c.seqs("crane-01") == [1, 2])
        }
    }

    @Test func partialLineWaitsForItsNewline() async throws {
        try await withSource { source, c, path in
            let line = Twin.line(seq: 7)
            let cut = line.index(line.startIndex, offsetBy: 30)
            append(path, String(line[..<cut]))
            #expect(await eventually { source.counters.bytes == 30 })
            #expect(c.count == 0)
            #expect(source.counters.droppedTotal == 0)
            append(path, String(line[cut...]) + "\n")
            #expect(await eventually { c.count == 1 })
            #expect(c.seqs("crane-01") == [7])
        }
    }

    @Test func followsRotation() async throws {
        try await withSource(prepare: { append($0, "") }) { source, c, path in
            append(path, Twin.line(seq: 1) + "\n")
            #expect(await eventually { c.count == 1 })
            // logrotate: rename away, the writer still finishes a line into the old file, then a new file.
            #expect(rename(path, path + ".1") == 0)
            append(path + ".1", Twin.line(seq: 2) + "\n")
            append(path, Twin.line(seq: 3) + "\n")
            #expect(await eventually { c.count == 3 })
            append(path, Twin.line(seq: 4) + "\n")
            #expect(await eventually { c.count == 4 })
            #expect(c.seqs("crane-01") == [1, 2, 3, 4])
            #expect(source.counters.rotations == 1)
            // And a second rotation, where the new file appears only later.
            #expect(rename(path, path + ".2") == 0)
            try await Task.sleep(for: .milliseconds(150))
            append(path, Twin.line(seq: 5) + "\n")
            #expect(await eventually { c.count == 5 })
            #expect(source.counters.rotations == 2)
        }
    }

    @Test func followsTruncation() async throws {
        try await withSource(prepare: { append($0, "") }) { source, c, path in
            append(path, Twin.line(seq: 1) + "\n" + Twin.line(seq: 2) + "\n")
            #expect(await eventually { c.count == 2 })
            // copytruncate: the file is emptied in place, then written again from the start.
            #expect(truncate(path, 0) == 0)
            #expect(await eventually { source.counters.truncations == 1 })
            append(path, Twin.line(seq: 3) + "\n")
            #expect(await eventually { c.count == 3 })
            #expect(c.seqs("crane-01") == [1, 2, 3])
        }
    }

    @Test func waitsForAFileThatDoesNotExistYet() async throws {
        try await withSource { _, c, path in
            try await Task.sleep(for: .milliseconds(100))
            append(path, Twin.line(seq: 1) + "\n" + Twin.line(seq: 2) + "\n")
            #expect(await eventually { c.count == 2 }, "a new file is read from its start")
        }
    }

    @Test func largeFileStartsAtItsEnd() async throws {
        // 1 GiB, sparse: the follower must seek, not read, to start at its end.
        let size: off_t = 1 << 30
        try await withSource(prepare: { path in
            append(path, Twin.line(seq: 1) + "\n")
            #expect(truncate(path, size) == 0)
            let fd = open(path, O_WRONLY)
            var nl: UInt8 = 0x0A
            _ = pwrite(fd, &nl, 1, size - 1)
            close(fd)
        }) { source, c, path in
            append(path, Twin.line(seq: 2) + "\n")
            #expect(await eventually { c.count == 1 })
            #expect(c.seqs("crane-01") == [2])
            #expect(source.counters.bytes < 1000, "read \(source.counters.bytes) bytes")
            #expect(source.counters.droppedTotal == 0)
        }
    }

    @Test func startedMidLineSkipsTheFragmentQuietly() async throws {
        try await withSource(prepare: { append($0, Twin.line(seq: 1) + "\n" + #"{"device":"crane-01","#) }) { source, c, path in
            append(path, #""ts":"x"}"# + "\n" + Twin.line(seq: 2) + "\n")
            #expect(await eventually { c.count == 1 })
            #expect(c.seqs("crane-01") == [2])
            #expect(source.counters.droppedTotal == 0)
        }
    }

    @Test func badLinesAreCountedAndTheFeedGoesOn() async throws {
        let logs = LogStore()
        try await withSource(prepare: { append($0, "") }, logs: logs) { source, c, path in
            var text = ""
            for i in 0..<50 { text += "garbage \(i)\n" }
            text += Twin.line("crane-99", seq: 1) + "\n"
            text += String(repeating: "x", count: TwinLineParser.maxLineBytes + 10) + "\n"
            text += Twin.line(seq: 1) + "\n" + Twin.line(seq: 1) + "\n\n"
            append(path, text)
            #expect(await eventually { source.counters.lines == 54 })
            let k = source.counters
            #expect(k.accepted == 1)
            #expect(k.dropped[.notJSON] == 50)
            #expect(k.dropped[.unknownDevice] == 1)
            #expect(k.dropped[.tooLong] == 1)
            #expect(k.dropped[.replay] == 1)
            #expect(k.blankLines == 1)
            #expect(k.lines == k.accepted + k.droppedTotal)
            #expect(c.seqs("crane-01") == [1])
            // Logged once per reason, with source and line number.
            let drops = logs.all.filter { $0.message == "twin line dropped" }
            #expect(drops.count == 4, "\(drops.map(\.metadata))")
            let notJSON = drops.first { $0.metadata["reason"] == "not_json" }
            #expect(notJSON?.metadata["line"] == "1")
            #expect(notJSON?.metadata["source"] == "file:\(path)")
            #expect(drops.first { $0.metadata["reason"] == "replay" }?.metadata["line"] == "54")
        }
    }

    @Test func rateLimitAllowsAgainAfterTheInterval() {
        var limiter = RateLimit(intervalSeconds: 60)
        #expect(limiter.admit("not_json", nowNs: 0) == 0)
        #expect(limiter.admit("not_json", nowNs: 1_000_000_000) == nil)
        #expect(limiter.admit("replay", nowNs: 1_000_000_000) == 0)
        #expect(limiter.admit("not_json", nowNs: 59_000_000_000) == nil)
        #expect(limiter.admit("not_json", nowNs: 60_000_000_000) == 2, "reports how many were suppressed")
    }

    @Test func stopIsPromptAndRepeatable() async throws {
        let dir = Twin.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let source = TwinFileSource(path: dir + "/f.jsonl", pipeline: Collector().feed, logger: Twin.quiet, pollIntervalMs: 60_000)
        try source.startFollowing()
        let t0 = Date()
        source.stopFollowing()
        source.stopFollowing()
        #expect(Date().timeIntervalSince(t0) < 5)
        #expect(throws: TwinSourceError.self) { try TwinFileSource(path: "", pipeline: Collector().feed).startFollowing() }
    }
}

@Suite("Line framer")
struct LineFramerTests {
    func lines(_ chunks: [String], max: Int = 16) -> [String] {
        var f = LineFramer(maxLineBytes: max)
        var out: [String] = []
        for c in chunks {
            Array(c.utf8).withUnsafeBytes { raw in
                f.feed(raw) { e in
                    switch e {
                    case .line(let l): out.append(String(decoding: l, as: UTF8.self))
                    case .tooLong(let n): out.append("<too long \(n)>")
                    }
                    return true
                }
            }
        }
        return out
    }

    @Test func framesAcrossChunks() {
        #expect(lines(["ab", "c\nde", "f\r\n\ng"]) == ["abc", "def", ""])
        #expect(lines(["0123456789abcdef\n"]) == ["0123456789abcdef"])
        #expect(lines(["0123456789abcdefg\nok\n"]) == ["<too long 17>", "ok"])
        #expect(lines(["0123456789", "abcdefgh", "ijk\nok\n"]) == ["<too long 18>", "ok"])
        #expect(lines(["01234567", "89abcdefX\nok\n"]) == ["<too long 17>", "ok"])
    }
}
