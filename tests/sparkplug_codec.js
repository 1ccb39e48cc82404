// An independent Sparkplug B codec for the tests: Eclipse Tahu's JavaScript `sparkplug-payload`
// (npm, EPL-2.0), not our code. One JSON request per stdin line, one JSON answer per stdout line:
//   {"decode": "<base64>"}        -> {"payload": {...}}  (Long values as numbers, bytes as base64)
//   {"encode": {...payload...}}   -> {"base64": "..."}
// Any failure -> {"error": "..."}.
const sparkplug = require('sparkplug-payload').get('spBv1.0');
const Long = require('long');
const readline = require('readline');

function plain(key, value) {
  if (value && typeof value === 'object' && 'low' in value && 'high' in value && 'unsigned' in value) {
    return Number(Long.fromValue(value).toString());
  }
  if (value instanceof Uint8Array || (value && value.type === 'Buffer')) {
    return Buffer.from(value.data || value).toString('base64');
  }
  return value;
}

const rl = readline.createInterface({ input: process.stdin });
rl.on('line', (line) => {
  let answer;
  try {
    const request = JSON.parse(line);
    if ('decode' in request) {
      answer = { payload: sparkplug.decodePayload(Buffer.from(request.decode, 'base64')) };
    } else {
      answer = { base64: Buffer.from(sparkplug.encodePayload(request.encode)).toString('base64') };
    }
  } catch (e) {
    answer = { error: String(e) };
  }
  process.stdout.write(JSON.stringify(answer, plain) + '\n');
});
