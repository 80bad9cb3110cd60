import Foundation
import Logging
import Platform
import TibetTwin

/// One log line per event on standard error, in the form its reader wants:
///
/// - under systemd (`$JOURNAL_STREAM` set: stderr is connected to the journal), each line starts
///   with its syslog priority as `<N>` (sd-daemon(3)), so `journalctl -p warning` filters and
///   the journal adds the time itself: `<4>tibet-twin.poller: poll failed device=crane-01`;
/// - elsewhere, with a UTC timestamp to the millisecond:
///   `2026-12-06T04:43:29.123Z warning tibet-twin.poller: poll failed device=crane-01`.
///
/// Metadata is logfmt: `key=value`, sorted by key, a value quoted (`"…"`, with `\"`, `\\`, `\n`
/// escaped) when it holds a space, a quote, `=`, a control character or nothing at all.
package struct LineLogHandler: LogHandler {
    package var logLevel: Logger.Level
    package var metadata: Logger.Metadata = [:]
    package let label: String
    /// Whether stderr goes to the journal (priority prefixes, no timestamp).
    package let journal: Bool
    private let write: @Sendable (String) -> Void

    /// `journal` defaults to whether `$JOURNAL_STREAM` is set; `write` to a write on fd 2.
    package init(label: String, level: Logger.Level = .info,
                 journal: Bool = ProcessInfo.processInfo.environment["JOURNAL_STREAM"] != nil,
                 write: @escaping @Sendable (String) -> Void = { try? SystemCall.writeAll(2, Array($0.utf8)) }) {
        self.label = label
        self.logLevel = level
        self.journal = journal
        self.write = write
    }

    package subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    package func log(event: LogEvent) {
        var all = metadata
        if let extra = event.metadata { all.merge(extra) { $1 } }
        var line = journal
            ? "<\(Self.priority(event.level))>\(label): "
            : "\(RFC3339.format(wallNs: Self.wallNs())) \(event.level) \(label): "
        line += Self.oneLine("\(event.message)")
        for key in all.keys.sorted() {
            line += " " + key + "=" + Self.logfmt("\(all[key]!)")
        }
        write(line + "\n")
    }

    /// The syslog priority journald reads from a `<N>` prefix.
    package static func priority(_ level: Logger.Level) -> Int {
        switch level {
        case .trace, .debug: return 7
        case .info: return 6
        case .notice: return 5
        case .warning: return 4
        case .error: return 3
        case .critical: return 2
        }
    }

    /// A logfmt value: as is when it is a plain token, quoted and escaped otherwise.
    package static func logfmt(_ value: String) -> String {
        let plain = !value.isEmpty && value.unicodeScalars.allSatisfy {
            $0.value > 0x20 && $0 != "\"" && $0 != "=" && $0 != "\\" && $0.properties.generalCategory != .control
        }
        if plain { return value }
        return "\"" + value.escapingControlCharacters(also: ["\"": "\\\"", "\\": "\\\\"]) + "\""
    }

    /// A message kept to one line (a newline in it would start a line without its prefix).
    static func oneLine(_ text: String) -> String { text.escapingControlCharacters() }

    static func wallNs() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
    }
}
