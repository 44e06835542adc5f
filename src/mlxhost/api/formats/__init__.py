"""One module per wire format: parse to the domain request, fold events into a body, frame a stream."""
