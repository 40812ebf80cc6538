import CMPI

/// A failed MPI call, naming the call, the rank and MPI's own message.
public struct MPIError: Error, CustomStringConvertible, Equatable {
    public let call: String
    public let rank: Int
    public let code: Int32
    public let message: String

    public var description: String { "MPI error in \(call) on rank \(rank): \(message) (code \(code))" }

    static func text(for code: Int32) -> String {
        var buffer = [CChar](repeating: 0, count: Int(torus_mpi_max_error_string()) + 1)
        var length: Int32 = 0
        guard MPI_Error_string(code, &buffer, &length) == MPI_SUCCESS else { return "unknown error" }
        return String(decoding: buffer.prefix(Int(length)).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

@inline(__always)
func check(_ code: Int32, _ call: @autoclosure () -> String, rank: Int) throws {
    if code != MPI_SUCCESS { throw MPIError(call: call(), rank: rank, code: code, message: MPIError.text(for: code)) }
}
