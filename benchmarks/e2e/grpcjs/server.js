'use strict';
// A grpc-js server of the benchmarked interop TestService methods, for the end-to-end benchmark.
//
// Run by benchmarks/e2e/grpcjs_server.py as
//   node server.js --port 0 --proto-root DIR [--cert FILE --key FILE]
// with NODE_PATH pointing at the node_modules the harness installed (npm ci of this directory's
// package-lock.json).  It keeps the contract of benchmarks/e2e/_serving.py: prints exactly
// "listening on PORT" once it accepts connections on 127.0.0.1 and exits 0 on SIGTERM/SIGINT.
// UnaryCall, StreamingInputCall and StreamingOutputCall do the per-call work of
// fastinject.interop.servicer (look for the echo headers, honour response_status, check the
// payload type and size, zero-filled payloads); every other method answers UNIMPLEMENTED.

const fs = require('fs');
const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const LISTEN_HOST = '127.0.0.1';
const MAX_PAYLOAD_SIZE = 16 << 20;
const MAX_MESSAGE_LENGTH = 16 << 20;
const STOP_GRACE_MS = 1000;
const COMPRESSABLE = 0;
const ECHO_KEYS = ['x-grpc-test-echo-initial', 'x-grpc-test-echo-trailing-bin'];

function parseArgs(argv) {
  const options = { port: 0, protoRoot: null, cert: null, key: null };
  const names = { '--port': 'port', '--proto-root': 'protoRoot', '--cert': 'cert', '--key': 'key' };
  for (let i = 0; i < argv.length; i += 2) {
    const name = names[argv[i]];
    if (name === undefined || i + 1 >= argv.length) {
      throw new Error(`usage: server.js --port N --proto-root DIR [--cert F --key F]; got ${argv[i]}`);
    }
    options[name] = argv[i + 1];
  }
  if (options.protoRoot === null) throw new Error('--proto-root is required');
  if ((options.cert === null) !== (options.key === null)) throw new Error('--cert needs --key');
  options.port = Number(options.port);
  return options;
}

function echoed(call) {
  return ECHO_KEYS.filter((key) => call.metadata.get(key).length > 0);
}

// Returns an error object for the callback, or null when the status asks for OK.
function echoStatus(status) {
  if (status && status.code) return { code: status.code, details: status.message };
  return null;
}

function payload(type, size) {
  if ((type || COMPRESSABLE) !== COMPRESSABLE || !(size >= 0 && size <= MAX_PAYLOAD_SIZE)) {
    return null;
  }
  return { type: COMPRESSABLE, body: Buffer.alloc(size) };
}

const invalidPayload = (type, size) => ({
  code: grpc.status.INVALID_ARGUMENT,
  details: `unsupported payload ${type}/${size}`,
});

function unaryCall(call, callback) {
  echoed(call);
  const request = call.request;
  const error = echoStatus(request.responseStatus);
  if (error !== null) return callback(error);
  const body = payload(request.responseType, request.responseSize || 0);
  if (body === null) return callback(invalidPayload(request.responseType, request.responseSize));
  return callback(null, { payload: body });
}

function streamingInputCall(call, callback) {
  echoed(call);
  let total = 0;
  call.on('data', (request) => {
    if (request.payload && request.payload.body) total += request.payload.body.length;
  });
  call.on('end', () => callback(null, { aggregatedPayloadSize: total }));
  call.on('error', () => {});
}

function streamingOutputCall(call) {
  echoed(call);
  const request = call.request;
  const error = echoStatus(request.responseStatus);
  if (error !== null) return call.destroy(error);
  const parameters = request.responseParameters || [];
  let index = 0;
  // Write while the stream accepts more, resume on 'drain': the server's own flow control.
  const writeSome = () => {
    while (index < parameters.length) {
      const params = parameters[index++];
      const body = payload(request.responseType, params.size || 0);
      if (body === null) return call.destroy(invalidPayload(request.responseType, params.size));
      if (params.intervalUs > 0) {
        setTimeout(() => {
          if (call.write({ payload: body })) writeSome();
          else call.once('drain', writeSome);
        }, params.intervalUs / 1000);
        return undefined;
      }
      if (!call.write({ payload: body })) return call.once('drain', writeSome);
    }
    return call.end();
  };
  return writeSome();
}

function unimplemented(_call, callback) {
  callback({ code: grpc.status.UNIMPLEMENTED, details: 'not implemented by this server' });
}

function main() {
  const options = parseArgs(process.argv.slice(2));
  const definition = protoLoader.loadSync(path.join('fastinject', 'interop', 'test.proto'), {
    includeDirs: [options.protoRoot],
  });
  const service = grpc.loadPackageDefinition(definition).grpc.testing.TestService.service;
  const implementation = {};
  for (const method of Object.keys(service)) implementation[method] = unimplemented;
  Object.assign(implementation, {
    UnaryCall: unaryCall,
    StreamingInputCall: streamingInputCall,
    StreamingOutputCall: streamingOutputCall,
  });
  const server = new grpc.Server({
    'grpc.max_receive_message_length': MAX_MESSAGE_LENGTH,
  });
  server.addService(service, implementation);
  const credentials = options.cert === null
    ? grpc.ServerCredentials.createInsecure()
    : grpc.ServerCredentials.createSsl(null, [{
      cert_chain: fs.readFileSync(options.cert),
      private_key: fs.readFileSync(options.key),
    }], false);
  server.bindAsync(`${LISTEN_HOST}:${options.port}`, credentials, (error, port) => {
    if (error) {
      process.stderr.write(`cannot listen: ${error.message}\n`);
      process.exit(1);
    }
    process.stdout.write(`listening on ${port}\n`);
  });
  const stop = () => {
    const force = setTimeout(() => {
      server.forceShutdown();
      process.exit(0);
    }, STOP_GRACE_MS);
    server.tryShutdown(() => {
      clearTimeout(force);
      process.exit(0);
    });
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
}

main();
