import Foundation
import Logging
import Synchronization
import Testing
@testable import Appliance
import TibetTwin
import TestSupport

/// Maps, keys and lines for the twin feed tests: `crane-01` unsigned, `crane-02` signed,
/// `hoist-77` unsigned (a name far from the others, for mutated lines).
enum Twin {
    static func map(_ device: String, twinKey: String? = nil) -> DeviceMap {
        DeviceMap(
            device: device, profile: .port, plc: PLCEndpoint(host: "127.0.0.1"),
            limits: Limits(maxDriftMs: 200, rearmMs: 100),
            status: StatusSpec(register: RegisterSpec(name: "status", address: 0), values: [0: "operational", 1: "fault"]),
            registers: [
                RegisterSpec(name: "position_x", address: 100, type: .float32, tolerance: 0.5),
                RegisterSpec(name: "load_kg", address: 102, type: .uint32, tolerance: 100),
            ],
            twinKey: twinKey, intents: [IntentSpec(name: "move_left", coil: 0)])
    }

    static var key: TwinSignFilter.PrivateKey { try! .init(rawRepresentation: [UInt8](repeating: 7, count: 32)) }

    static func parser() -> TwinLineParser {
        try! TwinLineParser(maps: [map("crane-01"), map("crane-02", twinKey: "k.pub"), map("hoist-77")],
                            keys: ["crane-02": TwinPublicKey(key.publicKey)])
    }

    /// A current line (ts = now) for `device` with `seq`.
    static func line(_ device: String = "crane-01", seq: Int, load: Double = 2500) -> String {
        let ts = RFC3339.format(wallNs: SystemTimeSource().now().wallNs)
        return #"{"device":"\#(device)","ts":"\#(ts)","seq":\#(seq),"status":"operational","values":{"position_x":12.5,"load_kg":\#(load)}}"#
    }

    static func signedLine(_ device: String = "crane-02", seq: Int) -> String {
        String(decoding: try! TwinLineSigner.sign(Array(line(device, seq: seq).utf8), key: key), as: UTF8.self)
    }

    /// Tests that do not look at logs keep the output readable.
    static let quiet = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })

    static func tempDir() -> String {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tibet-twin-\(UUID().uuidString.prefix(8))").path
        try! FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        return dir
    }
}

/// The appliance's sink, as a test sees it: every state in arrival order.
final class Collector: Sendable {
    final class Store: Sendable {
        let states = Mutex<[TwinState]>([])
    }

    let store: Store
    let feed: TwinFeedPipeline

    init(parser: TwinLineParser = Twin.parser()) {
        let store = Store()
        self.store = store
        feed = TwinFeedPipeline(parser: parser) { s in store.states.withLock { $0.append(s) } }
    }

    var all: [TwinState] { store.states.withLock { $0 } }

    /// The `seq`s the sink received for `device`: accepted states, or identity failures.
    func seqs(_ device: String, identityFailures: Bool = false) -> [UInt64] {
        all.filter { $0.device == device && $0.isIdentityFailure == identityFailures }.compactMap(\.seq)
    }

    var count: Int { store.states.withLock { $0.count } }
}

/// Captures log records for assertions.
final class LogStore: Sendable {
    struct Record: Sendable {
        var level: Logger.Level
        var message: String
        var metadata: [String: String]
    }

    private let records = Mutex<[Record]>([])

    func append(_ r: Record) { records.withLock { $0.append(r) } }
    var all: [Record] { records.withLock { $0 } }

    var logger: Logger {
        var l = Logger(label: "test") { _ in CapturingLogHandler(store: self) }
        l.logLevel = .debug
        return l
    }
}

struct CapturingLogHandler: LogHandler {
    let store: LogStore
    var logLevel: Logger.Level = .debug
    var metadata: Logger.Metadata = [:]
    var metadataProvider: Logger.MetadataProvider?

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var m: [String: String] = [:]
        for (k, v) in metadata { m[k] = "\(v)" }
        for (k, v) in event.metadata ?? [:] { m[k] = "\(v)" }
        store.append(.init(level: event.level, message: "\(event.message)", metadata: m))
    }
}

/// A blocking test client socket (TCP or unix), outside the event loop under test.
/// `@unchecked Sendable`: the descriptor never changes; a test uses a client from one thread at a time.
final class FeedClient: @unchecked Sendable {
    let fd: Int32

    /// Connects to 127.0.0.1:`tcpPort`, from `from` (another loopback address such as
    /// 127.0.0.2, which Linux routes to `lo` without configuration) when given.
    init(tcpPort: Int, from: String? = nil) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        if let from {
            var local = sockaddr_in()
            local.sin_family = sa_family_t(AF_INET)
            local.sin_addr.s_addr = inet_addr(from)
            let rc = withUnsafePointer(to: &local) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            guard rc == 0 else { close(fd); throw ClientError(what: "bind \(from)", errno: errno) }
        }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(tcpPort).bigEndian)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard rc == 0 else { close(fd); throw ClientError(what: "connect tcp \(tcpPort)", errno: errno) }
    }

    init(unixPath: String) throws {
        fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            let p = Array(unixPath.utf8)
            for (i, b) in p.enumerated() where i < raw.count - 1 { raw[i] = b }
        }
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard rc == 0 else { close(fd); throw ClientError(what: "connect unix \(unixPath)", errno: errno) }
    }

    struct ClientError: Error { var what: String; var errno: Int32 }

    /// Sends everything; false if the peer has closed the connection.
    @discardableResult
    func send(_ text: String) -> Bool { send(Array(text.utf8)) }

    @discardableResult
    func send(_ bytes: [UInt8]) -> Bool {
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + done, $0.count - done, Int32(MSG_NOSIGNAL)) }
            if n <= 0 { return false }
            done += n
        }
        return true
    }

    /// Whether the server closed the connection within `timeout` seconds (EOF or reset). Polls
    /// without blocking and sleeps between polls, so it never holds a cooperative thread.
    func waitForClose(timeout: Double) async -> Bool {
        await eventually(within: timeout) { peerHasClosed(fd) }
    }

    deinit { close(fd) }
}

/// Runs `body` with a started TCP twin source on an ephemeral port of 127.0.0.1, stopping it
/// afterwards (also when `body` throws).
func withTCP(options: TwinSocketSource.Options = .init(), parser: TwinLineParser = Twin.parser(),
             _ body: (TwinSocketSource, Collector, Int) async throws -> Void) async throws {
    let c = Collector(parser: parser)
    let source = TwinSocketSource(endpoint: .tcp(host: "127.0.0.1", port: 0), pipeline: c.feed, options: options, logger: Twin.quiet)
    try await source.start()
    do {
        try await body(source, c, try #require(source.localPort))
    } catch {
        await source.stop()
        throw error
    }
    await source.stop()
}
