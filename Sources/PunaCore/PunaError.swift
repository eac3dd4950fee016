/// The one error type of PunaCore. Embedded Swift supports only typed throws, so every throwing
/// function is `throws(PunaError)`; the message names the file, field, tensor or flag at fault.
public struct PunaError: Error, CustomStringConvertible, Equatable {
    public let message: String

    public init(_ message: String) { self.message = message }

    public var description: String { message }
}
