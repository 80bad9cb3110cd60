import Appliance
import Logging
import Synchronization
import Testing

@Suite("Log lines: journald priorities and logfmt")
struct LineLogHandlerTests {
    final class Lines: Sendable {
        let all = Mutex<[String]>([])
    }

    func logger(journal: Bool, _ lines: Lines, level: Logger.Level = .trace) -> Logger {
        Logger(label: "tibet-twin.test") { label in
            LineLogHandler(label: label, level: level, journal: journal) { line in lines.all.withLock { $0.append(line) } }
        }
    }

    @Test func underTheJournalEveryLineCarriesItsSyslogPriority() {
        let lines = Lines()
        let log = logger(journal: true, lines)
        log.debug("d")
        log.info("i")
        log.notice("n")
        log.warning("w")
        log.error("e")
        log.critical("c")
        #expect(lines.all.withLock { $0 } == [
            "<7>tibet-twin.test: d\n", "<6>tibet-twin.test: i\n", "<5>tibet-twin.test: n\n",
            "<4>tibet-twin.test: w\n", "<3>tibet-twin.test: e\n", "<2>tibet-twin.test: c\n",
        ])
    }

    @Test func elsewhereAMillisecondUTCTimestampAndTheLevel() throws {
        let lines = Lines()
        logger(journal: false, lines).warning("poll failed", metadata: ["device": "crane-01"])
        let line = try #require(lines.all.withLock { $0.first })
        // 2026-12-06T04:43:29.123Z warning tibet-twin.test: poll failed device=crane-01
        let parts = line.split(separator: " ", maxSplits: 2).map(String.init)
        #expect(parts.count == 3)
        #expect(parts[0].count == 24 && parts[0].hasSuffix("Z") && parts[0].dropFirst(19).first == ".")
        #expect(parts[1] == "warning")
        #expect(parts[2] == "tibet-twin.test: poll failed device=crane-01\n")
    }

    @Test func metadataIsLogfmtSortedAndQuotedWhereNeeded() throws {
        let lines = Lines()
        logger(journal: true, lines).error("audit write failed", metadata: [
            "path": "/var/lib/tibet-twin/audit/tibet-2.jsonl",
            "error": "open failed: ENOSPC (no space left on device)",
            "quote": "say \"hi\"",
            "empty": "",
            "eq": "a=b",
            "multi": "one\ntwo",
        ])
        let line = try #require(lines.all.withLock { $0.first })
        #expect(line == #"<3>tibet-twin.test: audit write failed empty="" eq="a=b" "#
            + #"error="open failed: ENOSPC (no space left on device)" multi="one\ntwo" "#
            + #"path=/var/lib/tibet-twin/audit/tibet-2.jsonl quote="say \"hi\""\#n"#)
    }

    @Test func aMessageStaysOneLineAndTheLevelFilters() {
        let lines = Lines()
        let log = logger(journal: true, lines, level: .warning)
        log.info("not shown")
        log.warning("two\nlines")
        #expect(lines.all.withLock { $0 } == ["<4>tibet-twin.test: two\\nlines\n"])
    }
}
