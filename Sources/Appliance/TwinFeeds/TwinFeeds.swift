import Crypto
import Logging
import Platform
import ServiceLifecycle
import TibetTwin

#if canImport(Glibc)
import Glibc
#endif

/// One twin source to run: an entry of docs/config.md `twin.feeds` (`ApplianceConfig.Feed`) in the
/// terms the sources take.
package enum TwinFeedSpec: Sendable, Hashable, CustomStringConvertible {
    /// A file followed like `tail -F`; `fromStart` reads what is already in it too.
    case file(path: String, fromStart: Bool)
    case tcp(host: String, port: Int, options: TwinSocketSource.Options = .init())
    case unix(path: String, options: TwinSocketSource.Options = .init())
    case mqtt(TwinMQTTSource.Settings)
    case opcua(TwinOPCUASource.Settings)

    /// The spec for a configured feed; reads its TLS files (a bad one is a start-up error).
    /// `maps` give an `mqtt` feed's Sparkplug bindings.
    package init(_ feed: ApplianceConfig.Feed, maps: [DeviceMap] = []) throws(TwinFeedConfigError) {
        switch feed {
        case .file(let path, let fromStart): self = .file(path: path, fromStart: fromStart)
        case .tcp(let listen, let access):
            let tls = try access.tls.map { (files) throws(TwinFeedConfigError) in try TwinFeedTLS(files) }
            self = .tcp(host: listen.host, port: listen.port, options: TwinSocketSource.Options(access, tls: tls))
        case .unix(let path, let access): self = .unix(path: path, options: TwinSocketSource.Options(access, tls: nil))
        case .mqtt(let m): self = .mqtt(try TwinMQTTSource.Settings(m, maps: maps))
        case .opcua(let o): self = .opcua(try TwinOPCUASource.Settings(o, maps: maps))
        }
    }

    package var description: String {
        switch self {
        case .file(let p, let s): return "file:\(p)" + (s ? " (from start)" : "")
        case .tcp(let h, let p, let o): return "tcp:\(h):\(p)" + (o.tls == nil ? "" : " (tls)")
        case .unix(let p, _): return "unix:\(p)"
        case .mqtt(let s): return "mqtt:\(s.options.broker)" + (s.options.tls == nil ? "" : " (tls)")
        case .opcua(let s): return "opcua:\(s.endpoint)"
        }
    }
}

/// A running twin source, whichever kind.
package protocol TwinSource: Sendable {
    /// `file:…`, `tcp:…` or `unix:…`.
    var name: String { get }
    /// A snapshot of the source's counters.
    var counters: TwinFeedCounters { get }
    /// Starts the source; returns once it is reading (or listening).
    func start() async throws(TwinSourceError)
    /// Stops the source and releases what it holds (threads, sockets, the unix socket file).
    func stop() async
}

extension TwinFileSource: TwinSource {
    package func start() async throws(TwinSourceError) { try startFollowing() }

    package func stop() async { stopFollowing() }
}

extension TwinSocketSource: TwinSource {}

extension TwinMQTTSource: TwinSource {}

extension TwinOPCUASource: TwinSource {}

/// All configured twin sources as one swift-service-lifecycle `Service`: starts them, runs until
/// graceful shutdown (or cancellation), then stops them (the unix socket file is removed).
package final class TwinFeedService: Service, Sendable {
    package let sources: [any TwinSource]
    package let pipeline: TwinFeedPipeline

    /// Makes one source per configured feed (docs/config.md `twin.feeds`), all feeding `pipeline`.
    /// Reads the feeds' TLS files; a missing or bad one throws, naming the config line.
    /// `events` receives the MQTT feeds' outages and recoveries (the appliance audits them).
    package convenience init(feeds: [ApplianceConfig.Feed], pipeline: TwinFeedPipeline,
                             logger: Logger = Logger(label: "tibet-twin.twin"),
                             events: (@Sendable (TwinFeedEvent) -> Void)? = nil,
                             maps: [DeviceMap] = []) throws(TwinFeedConfigError) {
        var specs: [TwinFeedSpec] = []
        for f in feeds { specs.append(try TwinFeedSpec(f, maps: maps)) }
        self.init(specs: specs, pipeline: pipeline, logger: logger, events: events)
    }

    /// Makes one source per spec, all feeding `pipeline`.
    package init(specs: [TwinFeedSpec], pipeline: TwinFeedPipeline, logger: Logger = Logger(label: "tibet-twin.twin"),
                 events: (@Sendable (TwinFeedEvent) -> Void)? = nil) {
        self.pipeline = pipeline
        self.sources = specs.map { spec -> any TwinSource in
            switch spec {
            case .file(let path, let fromStart):
                return TwinFileSource(path: path, fromStart: fromStart, pipeline: pipeline, logger: logger)
            case .tcp(let host, let port, let options):
                return TwinSocketSource(endpoint: .tcp(host: host, port: port), pipeline: pipeline, options: options, logger: logger)
            case .unix(let path, let options):
                return TwinSocketSource(endpoint: .unix(path: path), pipeline: pipeline, options: options, logger: logger)
            case .mqtt(let settings):
                return TwinMQTTSource(settings: settings, pipeline: pipeline, logger: logger, events: events)
            case .opcua(let settings):
                return TwinOPCUASource(settings: settings, pipeline: pipeline, logger: logger, events: events)
            }
        }
    }

    /// Counters of every source, for metrics and status.
    package var counters: [TwinFeedCounters] { sources.map(\.counters) }

    /// Starts every source (stopping those already started if one fails), waits for shutdown, stops them.
    package func run() async throws {
        var started: [any TwinSource] = []
        for s in sources {
            do {
                try await s.start()
                started.append(s)
            } catch {
                for t in started.reversed() { await t.stop() }
                throw error
            }
        }
        try? await gracefulShutdown()
        for s in started.reversed() { await s.stop() }
    }
}

/// `tibet-twin sign`: reads feed lines, writes them signed (docs/twin-feed.md), one output line per input
/// line. A line that cannot be signed (not a JSON object, already signed, too long) is reported
/// on the error stream with its number and not written; the rest go on.
package enum TwinSignFilter {
    /// The key type `run` takes (so callers need not import Crypto).
    package typealias PrivateKey = Curve25519.Signing.PrivateKey

    /// What a run did.
    package struct Summary: Sendable, Hashable {
        package var signed = 0
        package var rejected = 0
        /// Blank lines, passed through unchanged.
        package var blank = 0
    }

    /// Signs lines from `input` to `output` until end of input, reporting rejected lines on
    /// `errors` (file descriptors; output is written after each read, so it works in a live pipe).
    package static func run(key: Curve25519.Signing.PrivateKey, input: Int32 = 0, output: Int32 = 1, errors: Int32 = 2) -> Summary {
        var summary = Summary()
        // Input lines may be a little over the feed limit only if signing made them so; anything
        // longer is rejected, not buffered without bound.
        var framer = LineFramer(maxLineBytes: TwinLineParser.maxLineBytes)
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        var out: [UInt8] = []
        var err: [UInt8] = []
        var lineNumber = 0

        func signOne(_ line: UnsafeBufferPointer<UInt8>) {
            lineNumber += 1
            if TwinSourceCore.isBlank(line) {
                summary.blank += 1
                out.append(0x0A)
                return
            }
            do {
                out.append(contentsOf: try TwinLineSigner.sign(line, key: key))
                out.append(0x0A)
                summary.signed += 1
            } catch {
                summary.rejected += 1
                err.append(contentsOf: Array("tibet-twin sign: line \(lineNumber): \(error.detail)\n".utf8))
            }
        }

        while true {
            guard let n = try? SystemCall.retrying({ chunk.withUnsafeMutableBytes { read(input, $0.baseAddress, $0.count) } }),
                  n > 0 else { break }
            chunk.withUnsafeBytes { raw in
                framer.feed(UnsafeRawBufferPointer(rebasing: raw[0..<n])) { event in
                    switch event {
                    case .line(let l): signOne(l)
                    case .tooLong(let length):
                        lineNumber += 1
                        summary.rejected += 1
                        err.append(contentsOf: Array("tibet-twin sign: line \(lineNumber): longer than \(TwinLineParser.maxLineBytes) bytes (\(length)); skipped\n".utf8))
                    }
                    return true
                }
            }
            writeAll(output, &out)
            writeAll(errors, &err)
        }
        // A last line without its newline is still a line here.
        if framer.pendingBytes > 0, !framer.discarding {
            framer.partial.withUnsafeBufferPointer { signOne($0) }
        }
        writeAll(output, &out)
        writeAll(errors, &err)
        return summary
    }

    static func writeAll(_ fd: Int32, _ bytes: inout [UInt8]) {
        // A failed write loses the rest of this batch, as a closed pipe would.
        try? SystemCall.writeAll(fd, bytes)
        bytes.removeAll(keepingCapacity: true)
    }
}
