import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// A real `mosquitto` broker as a child process on a free port of 127.0.0.1, its config file in
/// a temp dir of its own; optionally TLS (a certificate and key, PEM) and a password file. Stopped
/// (SIGKILL: children inherit the test runner's blocked-signal mask) by `stop()` or deinit.
public final class MosquittoBroker: @unchecked Sendable {
    public struct TLSFiles: Sendable {
        public var ca: String
        public var cert: String
        public var key: String
        public var requireClientCertificate: Bool
        public init(ca: String, cert: String, key: String, requireClientCertificate: Bool = false) {
            self.ca = ca
            self.cert = cert
            self.key = key
            self.requireClientCertificate = requireClientCertificate
        }
    }

    public let dir: String
    public let port: Int
    public let tls: TLSFiles?
    /// `user:password` pairs; nil = anonymous clients allowed.
    public let users: [String: String]?
    private var process: Process?

    public init(tls: TLSFiles? = nil, users: [String: String]? = nil, port: Int? = nil) throws {
        guard FileManager.default.isExecutableFile(atPath: Self.mosquitto) else {
            throw SimpleError("mosquitto is not installed (scripts/setup.sh installs it)")
        }
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("tibet-mqtt-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        self.port = port ?? closedPort()
        self.tls = tls
        self.users = users
        if let users {
            var first = true
            for (user, password) in users.sorted(by: { $0.key < $1.key }) {
                let code = try Self.run("/usr/bin/mosquitto_passwd", ["-b"] + (first ? ["-c"] : []) + [dir + "/passwd", user, password])
                guard code == 0 else { throw SimpleError("mosquitto_passwd failed (exit \(code))") }
                first = false
            }
        }
        var conf = """
            listener \(self.port) 127.0.0.1
            persistence false
            log_dest file \(dir)/mosquitto.log
            log_type error
            log_type warning
            log_type notice
            max_queued_messages 0
            max_inflight_messages 0
            message_size_limit 0

            """
        if getuid() == 0 { conf += "user root\n" }
        if users != nil {
            conf += "allow_anonymous false\npassword_file \(dir)/passwd\n"
        } else {
            conf += "allow_anonymous true\n"
        }
        if let tls {
            conf += "cafile \(tls.ca)\ncertfile \(tls.cert)\nkeyfile \(tls.key)\n"
            conf += "require_certificate \(tls.requireClientCertificate)\n"
        }
        try conf.write(toFile: dir + "/mosquitto.conf", atomically: true, encoding: .utf8)
        try start()
    }

    static let mosquitto = "/usr/sbin/mosquitto"

    /// Starts the broker (again, after `stop()`: the same port) and waits until it accepts connections.
    public func start() throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: Self.mosquitto)
        p.arguments = ["-c", dir + "/mosquitto.conf"]
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try p.run()
        process = p
        guard waitUntil(within: 20, { p.isRunning && Self.accepts(port: port) }) else {
            let log = (try? String(contentsOfFile: dir + "/mosquitto.log", encoding: .utf8)) ?? ""
            stop()
            throw SimpleError("mosquitto did not start on port \(port):\n\(log)")
        }
    }

    /// Kills the broker at once (a crash, as far as clients can tell).
    public func stop() {
        guard let p = process else { return }
        process = nil
        if p.isRunning { kill(p.processIdentifier, SIGKILL) }
        p.waitUntilExit()
    }

    public var isRunning: Bool { process?.isRunning ?? false }

    /// The broker's log so far (for failure messages).
    public var log: String { (try? String(contentsOfFile: dir + "/mosquitto.log", encoding: .utf8)) ?? "" }

    deinit {
        stop()
        try? FileManager.default.removeItem(atPath: dir)
    }

    /// Runs `mosquitto_pub` against this broker; `arguments` come after host and port (`-t T -m M`,
    /// `-l` with `stdin`, `-r`, `-q 1` …). Returns the exit status.
    @discardableResult
    public func publish(_ arguments: [String], stdin: Data? = nil) throws -> Int32 {
        var args = ["-h", "127.0.0.1", "-p", String(port)]
        if let (user, password) = users?.first { args += ["-u", user, "-P", password] }
        if let tls { args += ["--cafile", tls.ca] }
        return try Self.run("/usr/bin/mosquitto_pub", args + arguments, stdin: stdin)
    }

    static func run(_ path: String, _ args: [String], stdin: Data? = nil) throws -> Int32 {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: path)
        p.arguments = args
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        let input = Pipe()
        if stdin != nil { p.standardInput = input }
        try p.run()
        if let stdin {
            // Written on its own thread: a large input would otherwise fill the pipe and block.
            let writer = Thread {
                input.fileHandleForWriting.write(stdin)
                try? input.fileHandleForWriting.close()
            }
            writer.start()
        }
        p.waitUntilExit()
        return p.terminationStatus
    }

    static func accepts(port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        return withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        } == 0
    }
}

/// A paho-mqtt 2.1.0 publisher in a child Python process (the second outside peer besides
/// `mosquitto_pub`): connects (TLS and credentials as given), publishes each message, waits for
/// every QoS 1 acknowledgement, and exits 0.
public enum PahoPublish {
    public struct Message: Sendable {
        public var topic: String
        public var payload: String
        public var retain: Bool
        public init(topic: String, payload: String, retain: Bool = false) {
            self.topic = topic
            self.payload = payload
            self.retain = retain
        }
    }

    static let script = """
        import json, sys
        import paho.mqtt.client as mqtt
        cfg = json.loads(sys.stdin.read())
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cfg.get("client_id", ""))
        if cfg.get("user"):
            c.username_pw_set(cfg["user"], cfg["password"])
        if cfg.get("ca"):
            c.tls_set(ca_certs=cfg["ca"])
        c.connect("127.0.0.1", cfg["port"], keepalive=10)
        c.loop_start()
        infos = [c.publish(m["topic"], m["payload"].encode() if isinstance(m["payload"], str) else bytes(m["payload"]), qos=1, retain=m["retain"]) for m in cfg["messages"]]
        for i in infos:
            i.wait_for_publish(timeout=30)
        c.disconnect()
        c.loop_stop()
        print("published", len(infos), flush=True)
        """

    /// Publishes `messages` through `broker` with paho; returns the exit status.
    @discardableResult
    public static func run(_ broker: MosquittoBroker, _ messages: [Message]) throws -> Int32 {
        guard let python = pythonWithPymodbus() else { throw SimpleError("python venv missing: run scripts/setup.sh") }
        var cfg: [String: Any] = ["port": broker.port, "messages": messages.map { ["topic": $0.topic, "payload": $0.payload, "retain": $0.retain] }]
        if let (user, password) = broker.users?.first {
            cfg["user"] = user
            cfg["password"] = password
        }
        if let tls = broker.tls { cfg["ca"] = tls.ca }
        let data = try JSONSerialization.data(withJSONObject: cfg)
        return try MosquittoBroker.run(python, ["-c", script], stdin: data)
    }
}
