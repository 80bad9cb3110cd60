import ArgumentParser
import OPCUA
import Platform

/// `tibet-twin opcua`: commissioning commands for a twin served over OPC UA.
struct OPCUACommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "opcua",
        abstract: "Look into an OPC UA server: its endpoints, its address space, node values.",
        discussion: """
            ENDPOINT is opc.tcp://HOST[:PORT][/PATH] (port 4840 when left out). The client speaks \
            security policy None only so far; see docs/opcua.md for what works today.
            """,
        subcommands: [OPCUAEndpointsCommand.self, OPCUABrowseCommand.self, OPCUAReadCommand.self])
}

/// What every `opcua` subcommand takes to connect.
struct OPCUAConnectionOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("Log in with this user name (with --password-file).", valueName: "NAME"))
    var user: String?

    @Option(name: .customLong("password-file"), help: ArgumentHelp("File whose first line is the password.", valueName: "FILE"))
    var passwordFile: String?

    @Option(name: .customLong("timeout-ms"), help: ArgumentHelp("Deadline for connecting and for each request.", valueName: "MS"))
    var timeoutMs: Int = 5000

    func validate() throws {
        guard (1...600_000).contains(timeoutMs) else { throw ValidationError("--timeout-ms must be 1…600000, got \(timeoutMs)") }
        if (user == nil) != (passwordFile == nil) { throw ValidationError("--user and --password-file go together") }
    }

    /// Client options; reads the password file (exit 2 when it cannot be read).
    func clientOptions() throws -> OPCUAClientOptions {
        var o = OPCUAClientOptions()
        o.timeoutMs = timeoutMs
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
            CLIOut.outputLine("\(e.endpointUrl ?? "-")  security=\(e.securityMode?.name ?? "?")/\(e.securityPolicyName)  logins=\(logins.joined(separator: ","))")
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
            let source = dv.sourceTimestamp?.description ?? "-"
            let server = dv.serverTimestamp?.description ?? "-"
            CLIOut.outputLine("\(t)  \(dv.hasValue && dv.value != .null ? dv.value.description : "-")  \(dv.status)  source=\(source) server=\(server)")
            if !dv.status.isGood { allGood = false }
        }
        if !allGood { throw ExitCode(1) }
    }
}
