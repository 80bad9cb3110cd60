/// What the poller needs of a client on one link, whichever transport carries it: Modbus/TCP
/// and serial RTU through libmodbus (`ModbusClient`), RTU frames on TCP (`RTUOverTCPClient`).
///
/// Thread confinement: implementations are not `Sendable`; one thread creates, uses and drops
/// each client.
public protocol ModbusLinkClient: AnyObject {
    /// The unit id sent with every request.
    var unit: Int { get }
    var responseTimeoutMs: Int { get }
    var byteTimeoutMs: Int? { get }
    var isConnected: Bool { get }
    /// `host:port` or the serial device, for messages.
    var endpoint: String { get }
    func setUnit(_ unit: Int) throws(ModbusError)
    func setTimeouts(responseMs: Int, byteMs: Int?) throws(ModbusError)
    func connect(timeoutMs: Int?) throws(ModbusError)
    func close()
    func readRegisters(table: ModbusTable, address: Int, count: Int,
                       into buffer: UnsafeMutableBufferPointer<UInt16>) throws(ModbusError)
    func readBits(table: ModbusTable, address: Int, count: Int,
                  into buffer: UnsafeMutableBufferPointer<UInt8>) throws(ModbusError)
}

extension ModbusClient: ModbusLinkClient {}
