import Foundation
import Platform
import Testing
import TestSupport
@testable import OPCUA

#if canImport(Glibc)
import Glibc
#endif

/// Connects a client to `endpoint` on a thread of its own and runs `body` with it.
private func withClient<T: Sendable>(_ endpoint: String, options: OPCUAClientOptions = OPCUAClientOptions(),
                                     _ body: @escaping @Sendable (OPCUAClient) throws -> T) async throws -> T {
    try await onThread {
        let client = try OPCUAClient(endpoint: endpoint, options: options)
        try client.connect()
        defer { client.disconnect() }
        return try body(client)
    }
}

private func node(_ text: String) throws -> NodeId { try NodeIdText(parsing: text).nodeId }

/// Against a real asyncua 2.1.0 server started by the test (scripts/asyncua_server.py).
@Suite("OPC UA client against asyncua", .serialized)
struct AsyncuaClientTests {
    @Test("GetEndpoints lists the None endpoint with its anonymous login")
    func getEndpoints() async throws {
        let server = try OPCUAPeer.asyncua()
        defer { server.stop() }
        let endpoints = try await onThread { try OPCUAClient.getEndpoints(endpoint: server.endpoint) }
        #expect(!endpoints.isEmpty)
        #expect(endpoints.allSatisfy { $0.securityMode == MessageSecurityMode.none && $0.securityPolicyName == "None" })
        #expect(endpoints.flatMap(\.userIdentityTokens).contains { $0.tokenType == .anonymous })
    }

    @Test("Read: values of several types with Good, Uncertain and Bad StatusCodes and both timestamps")
    func readValues() async throws {
        let server = try OPCUAPeer.asyncua()
        defer { server.stop() }
        let names = ["PosX", "Load", "Mode", "Name", "Running", "Counter", "Big", "Levels", "Stale", "Broken"]
        let values = try await withClient(server.endpoint) { c in
            try c.readValues(try names.map { try node("ns=2;s=Crane01.\($0)") })
        }
        #expect(values.count == names.count)
        let byName = Dictionary(uniqueKeysWithValues: zip(names, values))
        #expect(byName["PosX"]?.value == .double(12.5))
        #expect(byName["Load"]?.value == .float(250))
        #expect(byName["Mode"]?.value == .int32(1))
        #expect(byName["Name"]?.value == .string("crane one"))
        #expect(byName["Running"]?.value == .boolean(true))
        #expect(byName["Counter"]?.value == .uint32(7))
        #expect(byName["Big"]?.value == .int64(-9_000_000_000))
        #expect(byName["Levels"]?.value == .array(.double, [.double(1), .double(2.5), .double(4)], dimensions: nil))
        for n in ["PosX", "Load", "Mode", "Name", "Running", "Counter", "Big", "Levels"] {
            #expect(byName[n]?.status == .good, "\(n)")
        }
        #expect(byName["Stale"]?.status.name == "UncertainLastUsableValue")
        #expect(byName["Stale"]?.status.isGood == false)
        #expect(byName["Broken"]?.status.name == "BadSensorFailure")
        // Both timestamps, and recent: within a day of this machine's clock.
        let now = UADateTime.now().unixNanoseconds
        for (n, v) in byName {
            let source = try #require(v.sourceTimestamp, "\(n) has no SourceTimestamp")
            let serverTs = try #require(v.serverTimestamp, "\(n) has no ServerTimestamp")
            #expect(abs(source.unixNanoseconds - now) < 86_400_000_000_000, "\(n)")
            #expect(abs(serverTs.unixNanoseconds - now) < 86_400_000_000_000, "\(n)")
        }
    }

    @Test("Read: a value the server changes comes back with its new value, status and SourceTimestamp")
    func readAfterChange() async throws {
        let server = try OPCUAPeer.asyncua()
        defer { server.stop() }
        let before = UADateTime.now()
        try server.command("set PosX double 17.25 UncertainSubstituteValue")
        let v = try await withClient(server.endpoint) { c in try c.readValues([try node("ns=2;s=Crane01.PosX")])[0] }
        #expect(v.value == .double(17.25))
        #expect(v.status.name == "UncertainSubstituteValue")
        let source = try #require(v.sourceTimestamp)
        #expect(source.unixNanoseconds >= before.unixNanoseconds - 5_000_000_000)
    }

    @Test("Read: unknown nodes get BadNodeIdUnknown per item; numeric, GUID, opaque and nsu= NodeIds resolve")
    func nodeIdKinds() async throws {
        let server = try OPCUAPeer.asyncua()
        defer { server.stop() }
        let values = try await withClient(server.endpoint) { c in
            let texts = ["ns=2;s=Nope", "ns=2;i=5001", "ns=2;g=09087e75-8e5e-499b-954f-f2a9603db28a", "ns=2;b=AQID",
                         "nsu=urn:tibet-twin:test;s=Crane01.Mode"]
            return try c.readValues(try texts.map { try c.resolve(try NodeIdText(parsing: $0)) })
        }
        #expect(values[0].status == .badNodeIdUnknown)
        #expect(values[1].value == .int32(5001))
        #expect(values[2].value == .int32(16))
        #expect(values[3].value == .int32(3))
        #expect(values[4].value == .int32(1))
        let unknownNamespace = try await withClient(server.endpoint) { c -> OPCUAError? in
            do { _ = try c.resolve(try NodeIdText(parsing: "nsu=urn:nowhere;i=1")); return nil } catch let e as OPCUAError { return e }
        }
        #expect(unknownNamespace?.statusCode == .badNodeIdUnknown)
    }

    @Test("Browse: the Objects folder, and a folder of 40 through BrowseNext")
    func browse() async throws {
        let server = try OPCUAPeer.asyncua()
        defer { server.stop() }
        let (objects, many, crane) = try await withClient(server.endpoint) { c in
            (try c.browse(.numeric(85)), try c.browse(try node("ns=2;s=Many"), maxReferencesPerCall: 7), try c.browse(try node("ns=2;s=Crane01")))
        }
        #expect(objects.contains { $0.nodeId.nodeId == .numeric(2253) && $0.browseName.name == "Server" })
        let craneId = try node("ns=2;s=Crane01")
        let craneRef = objects.first { $0.nodeId.nodeId == craneId }
        #expect(craneRef?.browseName == QualifiedName(namespace: 2, name: "Crane01"))
        #expect(craneRef?.nodeClass == .object)
        #expect(many.count == 40)
        let expectedNames: Set<String> = Set((0..<40).map { (i: Int) -> String in i < 10 ? "Item0\(i)" : "Item\(i)" })
        let names: Set<String> = Set(many.compactMap(\.browseName.name))
        #expect(names == expectedNames)
        #expect(crane.filter { $0.nodeClass == .variable }.count == 11, "the ten test variables and the crane model's Beat")
    }

    @Test("Browse of an unknown node is a typed fault (asyncua says BadNodeIdInvalid); the session stays usable")
    func browseUnknown() async throws {
        let server = try OPCUAPeer.asyncua()
        defer { server.stop() }
        let (error, after) = try await withClient(server.endpoint) { c -> (OPCUAError?, DataValue) in
            var caught: OPCUAError?
            do { _ = try c.browse(try node("ns=2;s=Nowhere")) } catch let e as OPCUAError { caught = e }
            return (caught, try c.readValues([try node("ns=2;s=Crane01.Mode")])[0])
        }
        #expect(error?.statusCode == .badNodeIdInvalid)
        #expect(error?.description.contains("BadNodeIdInvalid") == true)
        #expect(after.value == .int32(1))
    }

    @Test("the secure channel is renewed before its token expires, and requests go on")
    func channelRenewal() async throws {
        let server = try OPCUAPeer.asyncua()
        defer { server.stop() }
        var options = OPCUAClientOptions()
        options.secureChannelLifetimeMs = 1000
        let (renewals, tokens, lastValue) = try await withClient(server.endpoint, options: options) { c in readUntilRenewedTwice(c) }
        #expect(renewals >= 2)
        #expect(tokens.count >= 3)
        #expect(lastValue.status.isGood)
    }

    @Test("a server that drops the connection gives a typed error; connecting again works")
    func serverDrops() async throws {
        let server = try OPCUAPeer.asyncua()
        defer { server.stop() }
        let result = try await onThread { () -> (OPCUAError?, Bool, DataValue) in
            let c = try OPCUAClient(endpoint: server.endpoint)
            try c.connect()
            defer { c.disconnect() }
            try server.command("drop")
            var caught: OPCUAError?
            _ = waitUntil(within: 20) {
                do { _ = try c.readValues([.numeric(2258)]); return false } catch let e as OPCUAError { caught = e; return true } catch { return true }
            }
            let connectedAfterFailure = c.isConnected
            try c.connect()
            return (caught, connectedAfterFailure, try c.readValues([try node("ns=2;s=Crane01.Mode")])[0])
        }
        let e = try #require(result.0)
        switch e.kind {
        case .closedByPeer, .socket: break
        default: Issue.record("unexpected \(e)")
        }
        #expect(result.1 == false)
        #expect(result.2.value == .int32(1))
    }

    @Test("a server that is not there: a typed connect error")
    func nothingListening() async throws {
        let port = closedPort()
        let e = try await onThread { () -> OPCUAError? in
            do { _ = try OPCUAClient.getEndpoints(endpoint: "opc.tcp://127.0.0.1:\(port)/"); return nil } catch let e as OPCUAError { return e }
        }
        #expect(e?.kind == .connect(.init(ECONNREFUSED)))
    }
}

/// User name logins against asyncua with users configured (anonymous off).
@Suite("OPC UA user name login against asyncua", .serialized)
struct AsyncuaUserLoginTests {
    private func connectError(_ endpoint: String, _ identity: UserIdentity) async throws -> OPCUAError? {
        var o = OPCUAClientOptions()
        o.identity = identity
        let options = o
        return try await onThread { () -> OPCUAError? in
            let c = try OPCUAClient(endpoint: endpoint, options: options)
            defer { c.disconnect() }
            do {
                try c.connect()
                _ = try c.readValues([.numeric(2258)])
                return nil
            } catch let e as OPCUAError {
                return e
            }
        }
    }

    @Test("the right password logs in (the server offers no encryption); a wrong one is a typed refusal; anonymous is refused")
    func userName() async throws {
        let server = try OPCUAPeer.asyncua(users: ["operator": "s3cret"])
        defer { server.stop() }
        #expect(try await connectError(server.endpoint, .userName("operator", password: Array("s3cret".utf8))) == nil)

        let wrong = try await connectError(server.endpoint, .userName("operator", password: Array("guess".utf8)))
        let code = try #require(wrong?.statusCode?.name)
        #expect(["BadUserAccessDenied", "BadIdentityTokenRejected", "BadIdentityTokenInvalid"].contains(code), "\(String(describing: wrong))")
        #expect(wrong?.operation == "ActivateSession")

        let anonymous = try await connectError(server.endpoint, .anonymous)
        #expect(anonymous?.kind == .refused("the server offers no anonymous login on a security-None endpoint"))
    }

    @Test("a server that offers encryption never gets the password unencrypted: the client refuses and says why")
    func noPlaintextPasswordWhereEncryptionIsOffered() async throws {
        let certs = try makeServerCertificate()
        defer { try? FileManager.default.removeItem(atPath: certs) }
        let server = try OPCUAPeer.asyncua(users: ["operator": "s3cret"], certificateDirectory: certs)
        defer { server.stop() }
        let endpoints = try await onThread { try OPCUAClient.getEndpoints(endpoint: server.endpoint) }
        #expect(endpoints.contains { $0.securityMode == .signAndEncrypt && $0.securityPolicyName == "Basic256Sha256" })
        let e = try await connectError(server.endpoint, .userName("operator", password: Array("s3cret".utf8)))
        guard case .refused(let why)? = e?.kind else { Issue.record("not refused: \(String(describing: e))"); return }
        #expect(why.contains("not sent unencrypted"))
    }
}
