import Appliance
import ArgumentParser
import OPCUA
import Platform
import TibetTwin

#if canImport(Glibc)
import Glibc
#endif

/// `tibet-twin opcua`: commissioning commands for a twin served over OPC UA.
struct OPCUACommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "opcua",
        abstract: "Look into an OPC UA server: its endpoints, its address space, node values.",
        discussion: """
            ENDPOINT is opc.tcp://HOST[:PORT][/PATH] (port 4840 when left out). Security policy None, \
            or Basic256Sha256 in mode Sign or SignAndEncrypt with the appliance's certificate \
            (`opcua cert`) and a trust directory of server certificates (`opcua trust`); see \
            docs/opcua.md.
            """,
        subcommands: [OPCUAEndpointsCommand.self, OPCUABrowseCommand.self, OPCUAReadCommand.self, OPCUAWatchCommand.self,
                      OPCUACertCommand.self, OPCUATrustCommand.self])
}

/// What every `opcua` subcommand takes to connect.
struct OPCUAConnectionOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("Log in with this user name (with --password-file).", valueName: "NAME"))
    var user: String?

    @Option(name: .customLong("password-file"), help: ArgumentHelp("File whose first line is the password.", valueName: "FILE"))
    var passwordFile: String?

    @Option(name: .customLong("timeout-ms"), help: ArgumentHelp("Deadline for connecting and for each request.", valueName: "MS"))
    var timeoutMs: Int = 5000

    @Option(name: .long, help: ArgumentHelp("Security policy: None or Basic256Sha256.", valueName: "POLICY"))
    var security: String = "None"

    @Option(name: .long, help: ArgumentHelp("Security mode: Sign or SignAndEncrypt (default SignAndEncrypt with Basic256Sha256).", valueName: "MODE"))
    var mode: String?

    @Option(name: .long, help: ArgumentHelp("The appliance's certificate (cert.der from `opcua cert`).", valueName: "FILE"))
    var cert: String?

    @Option(name: .long, help: ArgumentHelp("Its private key (key.pem from `opcua cert`).", valueName: "FILE"))
    var key: String?

    @Option(name: .customLong("trust-dir"), help: ArgumentHelp("Directory of trusted server certificates.", valueName: "DIR"))
    var trustDir: String?

    func validate() throws {
        guard (1...600_000).contains(timeoutMs) else { throw ValidationError("--timeout-ms must be 1…600000, got \(timeoutMs)") }
        if (user == nil) != (passwordFile == nil) { throw ValidationError("--user and --password-file go together") }
        let s = try securitySettings()
        if s.policy == .none, s.mode != .none { throw ValidationError("--mode \(s.mode.rawValue) needs --security Basic256Sha256") }
        if s.policy != .none, s.mode == .none { throw ValidationError("--security \(s.policy.rawValue) needs --mode Sign or SignAndEncrypt") }
        if s.isSecured, cert == nil || key == nil || trustDir == nil {
            throw ValidationError("--security \(s.policy.rawValue) needs --cert, --key (from `tibet-twin opcua cert`) and --trust-dir")
        }
    }

    /// The security options as one value.
    func securitySettings() throws -> OPCUASecurity {
        guard let policy = OPCUASecurity.Policy(name: security) else { throw ValidationError("--security must be None or Basic256Sha256, got \(security)") }
        let m: OPCUASecurity.Mode
        if let mode {
            guard let parsed = OPCUASecurity.Mode(name: mode) else { throw ValidationError("--mode must be Sign or SignAndEncrypt, got \(mode)") }
            m = parsed
        } else {
            m = policy == .none ? .none : .signAndEncrypt
        }
        return OPCUASecurity(policy: policy, mode: m, certificatePath: cert, privateKeyPath: key, trustDirectory: trustDir)
    }

    /// Client options; reads the password file (exit 2 when it cannot be read).
    func clientOptions() throws -> OPCUAClientOptions {
        var o = OPCUAClientOptions()
        o.timeoutMs = timeoutMs
        o.security = try securitySettings()
        if let user, let passwordFile {
            let text: String
            do { text = try CLIFiles.readText(passwordFile) } catch {
                CLIOut.error(error.description)
                throw ExitCode(2)
            }
            let password = text.split(separator: "\n", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? ""
            o.identity = .userName(user, password: Array(password.utf8))
        }
        return o
    }

    /// A connected client, or exit 1 with the reason on stderr.
    func connect(_ endpoint: String) throws -> OPCUAClient {
        let client: OPCUAClient
        do { client = try OPCUAClient(endpoint: endpoint, options: clientOptions()) } catch let e as OPCUAError {
            CLIOut.error(e.description)
            throw ExitCode(2)
        }
        do { try client.connect() } catch {
            CLIOut.error(error.description)
            throw ExitCode(1)
        }
        return client
    }
}

/// Parses NodeId texts for the commands (exit 2 on a bad one).
enum OPCUACLI {
    /// This machine's host name (gethostname), `localhost` if it has none.
    static func hostName() -> String {
        var buffer = [CChar](repeating: 0, count: 256)
        guard gethostname(&buffer, buffer.count - 1) == 0 else { return "localhost" }
        let name = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return name.isEmpty ? "localhost" : name
    }

    /// `NODE  VALUE  STATUS  source=TIME server=TIME`, `-` for what the server did not send.
    static func valueLine(_ node: String, _ dv: DataValue) -> String {
        let value = dv.hasValue && dv.value != .null ? dv.value.description : "-"
        let source = dv.sourceTimestamp?.description ?? "-"
        let server = dv.serverTimestamp?.description ?? "-"
        return "\(node)  \(value)  \(dv.status)  source=\(source) server=\(server)"
    }

    static func parseNode(_ text: String) throws -> NodeIdText {
        do { return try NodeIdText(parsing: text) } catch {
            CLIOut.error(error.description)
            throw ExitCode(2)
        }
    }

    /// The name of a data type: the built-in name for i=1…25, else its browse name on the server.
    static func dataTypeName(_ id: NodeId, client: OPCUAClient, cache: inout [NodeId: String]) -> String {
        if id.namespace == 0, case .numeric(let n) = id.identifier, n <= 25, let b = BuiltinType(rawValue: UInt8(n)) { return b.name }
        if let known = cache[id] { return known }
        var name = id.description
        if let dv = try? client.read([ReadValueId(id, attribute: .browseName)]).first, case .qualifiedName(let q) = dv.value, let n = q.name {
            name = n
        }
        cache[id] = name
        return name
    }
}

/// `tibet-twin opcua endpoints ENDPOINT`
struct OPCUAEndpointsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "endpoints",
        abstract: "List the endpoints a server offers: security mode and policy, and the logins each accepts.",
        discussion: "Exit codes: 0 listed, 1 the server could not be asked, 2 bad input.")

    @Argument(help: ArgumentHelp("opc.tcp://HOST[:PORT][/PATH]", valueName: "ENDPOINT"))
    var endpoint: String

    @OptionGroup var connection: OPCUAConnectionOptions

    func run() throws {
        let endpoints: [EndpointDescription]
        do { endpoints = try OPCUAClient.getEndpoints(endpoint: endpoint, options: connection.clientOptions()) } catch let e as OPCUAError {
            CLIOut.error(e.description)
            throw ExitCode(1)
        }
        for e in endpoints {
            let logins = e.userIdentityTokens.map { p -> String in
                switch p.tokenType {
                case .anonymous?: return "anonymous"
                case .userName?: return "username"
                case .certificate?: return "certificate"
                case .issuedToken?: return "issued-token"
                case nil: return "unknown"
                }
            }
            var line = "\(e.endpointUrl ?? "-")  security=\(e.securityMode?.name ?? "?")/\(e.securityPolicyName)  logins=\(logins.joined(separator: ","))"
            if let thumbprint = e.serverCertificateThumbprint { line += "  cert-sha1=\(thumbprint)" }
            CLIOut.outputLine(line)
        }
    }
}

/// `tibet-twin opcua browse ENDPOINT [NODE]`
struct OPCUABrowseCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "browse",
        abstract: "Print the address space below a node as a tree: NodeId, browse name, node class, data type.",
        discussion: """
            NODE defaults to the Objects folder (i=85). NodeIds: i=85, ns=2;s=Crane01.PosX, \
            ns=1;g=GUID, ns=1;b=BASE64, nsu=URI;s=… (namespace by URI).
            Each line: indentation by depth, NodeId, browse name (NS:NAME), node class, and for \
            variables their data type. The Server object (i=2253) is listed but not opened unless \
            it is NODE.
            Exit codes: 0 browsed, 1 the server could not be reached or the node browsed, 2 bad input.
            """)

    @Argument(help: ArgumentHelp("opc.tcp://HOST[:PORT][/PATH]", valueName: "ENDPOINT"))
    var endpoint: String

    @Argument(help: ArgumentHelp("The node to start from.", valueName: "NODE"))
    var node: String = "i=85"

    @Option(name: .long, help: "How many levels below NODE to open.")
    var depth: Int = 3

    @OptionGroup var connection: OPCUAConnectionOptions

    func validate() throws {
        guard (1...20).contains(depth) else { throw ValidationError("--depth must be 1…20, got \(depth)") }
    }

    func run() throws {
        let start = try OPCUACLI.parseNode(node)
        let client = try connection.connect(endpoint)
        defer { client.disconnect() }
        var cache: [NodeId: String] = [:]
        do {
            let root = try client.resolve(start)
            CLIOut.outputLine(root.description)
            try printChildren(of: root, level: 1, client: client, cache: &cache)
        } catch {
            CLIOut.error(error.description)
            throw ExitCode(1)
        }
    }

    private func printChildren(of parent: NodeId, level: Int, client: OPCUAClient, cache: inout [NodeId: String]) throws(OPCUAError) {
        let refs = try client.browse(parent).filter { $0.nodeId.serverIndex == 0 && $0.nodeId.namespaceUri == nil }
        let variables = refs.filter { $0.nodeClass == .variable }.map(\.nodeId.nodeId)
        var types: [NodeId: String] = [:]
        if !variables.isEmpty {
            let values = try client.read(variables.map { ReadValueId($0, attribute: .dataType) })
            for (v, dv) in zip(variables, values) {
                if case .nodeId(let t) = dv.value { types[v] = OPCUACLI.dataTypeName(t, client: client, cache: &cache) }
            }
        }
        let indent = String(repeating: "  ", count: level)
        for r in refs {
            let id = r.nodeId.nodeId
            var line = "\(indent)\(id)  \(r.browseName)  \(r.nodeClass)"
            if let t = types[id] { line += "  \(t)" }
            CLIOut.outputLine(line)
            if level < depth && r.nodeClass != .variable && id != .numeric(2253) {
                try printChildren(of: id, level: level + 1, client: client, cache: &cache)
            }
        }
    }
}

/// `tibet-twin opcua read ENDPOINT NODE…`
struct OPCUAReadCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "read",
        abstract: "Read node values once: value, StatusCode, source and server timestamps.",
        discussion: """
            One line per node: NodeId, value (`-` for none), StatusCode (Good, or its name such as \
            UncertainLastUsableValue or BadNodeIdUnknown), source=TIME server=TIME (RFC 3339, \
            UTC; `-` where the server sent none).
            Exit codes: 0 every value Good; 1 a value not Good (Uncertain is not Good) or the \
            server could not be read; 2 bad input.
            """)

    @Argument(help: ArgumentHelp("opc.tcp://HOST[:PORT][/PATH]", valueName: "ENDPOINT"))
    var endpoint: String

    @Argument(help: ArgumentHelp("NodeIds to read (i=…, ns=N;s=…, nsu=URI;s=…).", valueName: "NODE"))
    var nodes: [String]

    @OptionGroup var connection: OPCUAConnectionOptions

    func validate() throws {
        guard !nodes.isEmpty else { throw ValidationError("name at least one NODE") }
        guard nodes.count <= 10_000 else { throw ValidationError("at most 10000 nodes per read") }
    }

    func run() throws {
        let texts = try nodes.map(OPCUACLI.parseNode)
        let client = try connection.connect(endpoint)
        defer { client.disconnect() }
        let values: [DataValue]
        do {
            values = try client.readValues(try texts.map { t throws(OPCUAError) in try client.resolve(t) })
        } catch {
            CLIOut.error(error.description)
            throw ExitCode(1)
        }
        var allGood = true
        for (t, dv) in zip(texts, values) {
            CLIOut.outputLine(OPCUACLI.valueLine(t.description, dv))
            if !dv.status.isGood { allGood = false }
        }
        if !allGood { throw ExitCode(1) }
    }
}

/// `tibet-twin opcua watch ENDPOINT NODE…`
struct OPCUAWatchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "watch",
        abstract: "Subscribe to nodes and print every notification: value, StatusCode, timestamps.",
        discussion: """
            Monitored items report every change of status, value or source timestamp (a model \
            that rewrites the same value each cycle shows a line per cycle). Lines as for `read`; \
            besides them: `subscribed NODE=STATUS …` when (re)subscribed, `keep-alive` when the \
            server says nothing changed, `lost: REASON (retry in MS ms)` when the connection or \
            the subscription is lost (it reconnects by itself).
            Runs until interrupted, or until --count value lines were printed.
            Exit codes: 0 stopped after --count lines; 1 cannot start; 2 bad input.
            """)

    @Argument(help: ArgumentHelp("opc.tcp://HOST[:PORT][/PATH]", valueName: "ENDPOINT"))
    var endpoint: String

    @Argument(help: ArgumentHelp("NodeIds to watch (i=…, ns=N;s=…, nsu=URI;s=…).", valueName: "NODE"))
    var nodes: [String] = []

    @Option(name: .long, help: ArgumentHelp("Watch the nodes this register map (file or folder, repeatable) binds as its twin (twin: {opcua: …}), and print the twin state the guard would get.", valueName: "M"))
    var map: [String] = []

    @Option(name: .customLong("sampling-ms"), help: ArgumentHelp("How often the server samples each node.", valueName: "MS"))
    var samplingMs: Int = 100

    @Option(name: .long, help: "Stop after this many value lines.")
    var count: Int?

    @OptionGroup var connection: OPCUAConnectionOptions

    func validate() throws {
        guard !nodes.isEmpty || !map.isEmpty else { throw ValidationError("name at least one NODE, or --map") }
        guard nodes.isEmpty || map.isEmpty else { throw ValidationError("NODEs or --map, not both") }
        guard nodes.count <= 10_000 else { throw ValidationError("at most 10000 nodes") }
        guard (1...60_000).contains(samplingMs) else { throw ValidationError("--sampling-ms must be 1…60000, got \(samplingMs)") }
        if let count, count < 1 { throw ValidationError("--count must be at least 1") }
    }

    func run() throws {
        PhysicalCLI.unblockTerminationSignals()
        if !map.isEmpty { return try watchMaps() }
        let texts = try nodes.map(OPCUACLI.parseNode)
        do { _ = try UAEndpointURL(parsing: endpoint) } catch {
            CLIOut.error(error.description)
            throw ExitCode(2)
        }
        let names = texts.map(\.description)
        let config = OPCUASubscriber.Configuration(endpoint: endpoint, nodes: texts, samplingIntervalMs: Double(samplingMs),
                                                   publishingIntervalMs: Double(samplingMs), options: try connection.clientOptions())
        let events = WaitQueue<OPCUASubscriber.Event>()
        let subscriber = OPCUASubscriber(config) { events.push($0, limit: 100_000) }
        do { try subscriber.start() } catch {
            CLIOut.error(error.description)
            throw ExitCode(1)
        }
        defer { subscriber.stop() }
        var printed = 0
        while true {
            for event in events.take(max: 1000, deadlineNs: nil).batch {
                switch event {
                case .subscribed(let statuses):
                    CLIOut.outputLine("subscribed " + zip(names, statuses).map { "\($0)=\($1)" }.joined(separator: " "))
                case .values(let values):
                    for v in values {
                        CLIOut.outputLine(OPCUACLI.valueLine(names[v.index], v.value))
                        printed += 1
                        if let count, printed >= count { return }
                    }
                case .keepAlive:
                    CLIOut.outputLine("keep-alive")
                case .lost(let e, let retry):
                    CLIOut.errorLine("lost: \(e) (retry in \(retry) ms)")
                }
            }
        }
    }
}

/// `tibet-twin opcua cert --out DIR`
struct OPCUACertCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cert",
        abstract: "Make the appliance's OPC UA application instance certificate and private key.",
        discussion: """
            Writes DIR/cert.der (give it to the server to trust), DIR/cert.pem (the same in PEM) and \
            DIR/key.pem (the private key, mode 0600): RSA 2048, SHA-256, self-signed, the application \
            URI and host name in subjectAltName. Prints the SHA-1 thumbprint the server's operator \
            compares. Existing files are not replaced without --force.
            Exit codes: 0 made, 1 not made (files exist, cannot write), 2 bad input.
            """)

    @Option(name: .long, help: ArgumentHelp("Directory to write cert.der, cert.pem and key.pem to.", valueName: "DIR"))
    var out: String

    @Option(name: .long, help: ArgumentHelp("Application URI (must match the client's in the server's eyes).", valueName: "URI"))
    var uri: String?

    @Option(name: .long, help: ArgumentHelp("Host name for the subjectAltName (default: this machine's).", valueName: "NAME"))
    var host: String?

    @Option(name: .customLong("days"), help: ArgumentHelp("Validity in days.", valueName: "DAYS"))
    var days: Int = 3650

    @Flag(name: .long, help: "Replace an existing certificate and key.")
    var force = false

    func run() throws {
        let hostName = host ?? OPCUACLI.hostName()
        let applicationUri = uri ?? "urn:\(hostName):tibet-twin"
        guard applicationUri.contains(":"), !hostName.isEmpty else {
            CLIOut.error("--uri must be a URI (urn:…), --host a host name")
            throw ExitCode(2)
        }
        do {
            let made = try OPCUACertificateTool.makeCertificate(directory: out, applicationUri: applicationUri, host: hostName,
                                                                validityDays: days, force: force)
            CLIOut.outputLine("certificate  \(made.certificateDER)  (PEM: \(made.certificatePEM))")
            CLIOut.outputLine("private key  \(made.privateKeyPEM)  (mode 0600)")
            CLIOut.outputLine("application URI  \(made.applicationUri)")
            CLIOut.outputLine("SHA-1 thumbprint  \(made.thumbprint)")
        } catch {
            CLIOut.error(error.description)
            throw ExitCode(1)
        }
    }
}

/// `tibet-twin opcua trust FILE --trust-dir DIR`
struct OPCUATrustCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "trust",
        abstract: "Trust a server certificate: copy it (DER or PEM) into the trust directory.",
        discussion: """
            Check its SHA-1 thumbprint (printed) against the one the server's operator reads off the \
            server before trusting it. A refused server certificate is saved to DIR/rejected/.
            Exit codes: 0 trusted, 1 not (unreadable, not a certificate, cannot write).
            """)

    @Argument(help: ArgumentHelp("The server certificate.", valueName: "FILE"))
    var file: String

    @Option(name: .customLong("trust-dir"), help: ArgumentHelp("The trust directory.", valueName: "DIR"))
    var trustDir: String

    func run() throws {
        do {
            let t = try OPCUACertificateTool.trust(certificate: file, trustDirectory: trustDir)
            CLIOut.outputLine("trusted  \(t.subject)  SHA-1 \(t.thumbprint)  -> \(t.path)")
        } catch {
            CLIOut.error(error.description)
            throw ExitCode(1)
        }
    }
}

extension OPCUAWatchCommand {
    /// `--map`: the maps' bound nodes as the guard sees them. Per notification a line per node
    /// (`DEVICE.KEY NODE VALUE STATUS source=… server=…`), then per device concerned the twin
    /// state it makes: `twin DEVICE status=… ts=… (source|server) KEY=VALUE … missing: KEY (why)`.
    func watchMaps() throws {
        let maps = try PhysicalCLI.loadMaps(map)
        let bindings = Dictionary(maps.compactMap { m in m.opcua.map { (m.device, $0) } }, uniquingKeysWith: { a, _ in a })
        guard !bindings.isEmpty else {
            CLIOut.error("no map of \(map.joined(separator: ", ")) binds its twin to OPC UA (twin: {opcua: …})")
            throw ExitCode(2)
        }
        do { _ = try UAEndpointURL(parsing: endpoint) } catch {
            CLIOut.error(error.description)
            throw ExitCode(2)
        }
        var view = OPCUATwinView(bindings: bindings)
        var labels = Array(repeating: [String](), count: view.nodes.count)
        for d in view.devices {
            labels[d.status].append("\(d.name).status")
            for (name, n) in d.values { labels[n].append("\(d.name).\(name)") }
            if let h = d.heartbeat { labels[h].append("\(d.name).heartbeat") }
        }
        var config = OPCUASubscriber.Configuration(endpoint: endpoint, nodes: try view.nodes.map(OPCUACLI.parseNode),
                                                   samplingIntervalMs: view.samplingMs.min() ?? Double(samplingMs),
                                                   publishingIntervalMs: view.samplingMs.min() ?? Double(samplingMs),
                                                   options: try connection.clientOptions())
        config.samplingIntervalsMs = view.samplingMs
        let events = WaitQueue<OPCUASubscriber.Event>()
        let subscriber = OPCUASubscriber(config) { events.push($0, limit: 100_000) }
        do { try subscriber.start() } catch {
            CLIOut.error(error.description)
            throw ExitCode(1)
        }
        defer { subscriber.stop() }
        let clock = SystemTimeSource()
        var printed = 0
        while true {
            for event in events.take(max: 1000, deadlineNs: nil).batch {
                let now = clock.now()
                var touched: [Int] = []
                switch event {
                case .subscribed(let statuses):
                    view.subscribed(statuses, nowNs: now.monotonicNs)
                    CLIOut.outputLine("subscribed " + zip(view.nodes, statuses).map { "\($0)=\($1)" }.joined(separator: " "))
                case .values(let values):
                    touched = view.update(values, nowNs: now.monotonicNs)
                    for v in values {
                        CLIOut.outputLine(labels[v.index].joined(separator: ",") + "  " + OPCUACLI.valueLine(view.nodes[v.index], v.value))
                    }
                case .keepAlive:
                    CLIOut.outputLine("keep-alive")
                case .lost(let e, let retry):
                    view.lost()
                    CLIOut.errorLine("lost: \(e) (retry in \(retry) ms); every bound device has no twin")
                }
                let beats = view.checkHeartbeats(nowNs: now.monotonicNs)
                for (_, detail) in beats.stalled { CLIOut.outputLine("silent \(detail)") }
                for d in beats.resumed { CLIOut.outputLine("heartbeat \(d) moves again") }
                for d in touched {
                    CLIOut.outputLine(Self.stateLine(view.state(device: d, received: now), silent: view.stalled.contains(view.devices[d].name)))
                    printed += 1
                    if let count, printed >= count { return }
                }
            }
        }
    }

    /// `twin crane-01 status=operational ts=2026-…Z (source) load_kg=2500 position_x=12.5 missing: …`
    static func stateLine(_ s: TwinState, silent: Bool) -> String {
        var line = "twin \(s.device) status=\(s.status.isEmpty ? "?" : s.status) ts=\(RFC3339.format(wallNs: s.tsNs))"
        line += " (\(s.quality?.timestamp.rawValue ?? "received"))"
        for (k, v) in s.values.sorted(by: { $0.key < $1.key }) { line += " \(k)=\(NumberText.text(v, precision: .float64))" }
        let missing = (s.quality?.values ?? [:]).filter { $0.value.level != .good }.sorted { $0.key < $1.key }
        if !missing.isEmpty {
            line += " not good: " + missing.map { "\($0.key) (\($0.value.level.rawValue)\($0.value.reason.map { ": " + $0 } ?? ""))" }.joined(separator: ", ")
        }
        if silent { line += " SILENT (heartbeat stalled)" }
        return line
    }
}
