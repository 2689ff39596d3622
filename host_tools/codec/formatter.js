// Lanterne payload formatter, formats v2 and v3 (docs/payload.md), for LoRaWAN network servers.
//
// Paste into The Things Stack v3 (uplink payload formatter, "Custom Javascript") or a
// ChirpStack v4 device profile codec. decodeUplink(input) takes {bytes, fPort} and returns
// {data, warnings, errors}; a frame that is not a complete, intact v2/v3 payload gives one
// error naming what is wrong and at which byte, and no data. v3 = v2 + extension fields
// (particulate matter, sound levels, lamp energy and burning hours) + a 16-bit status mask.
// Framing: over LoRaWAN the format version is the FPort minus 100 (v2: 102, v3: 103) and the
// payload has no version byte; without an fPort (null or absent) the bytes are an MQTT
// frame whose byte 0 is the version.
// Plain ES5, no dependencies: integers stay below 2^53 and bit operations below 2^31.

var FORMAT_VERSION = 2;
var FORMAT_V3 = 3;
var FPORT_BASE = 100;
var FPORT = FPORT_BASE + FORMAT_VERSION;
var FPORT_V3 = FPORT_BASE + FORMAT_V3;
var V3_RESERVED = 0xE000;
var MAX_FRAME = 1024;
var MIN_PAYLOAD = 3;
var MIN_CHECK_BITS = 4, MAX_CHECK_BITS = 11;
var AGE_MAX = 16777216;
var AGE_CODE_MAX = 1216;
var MAX_EG_ZEROS = 26;
var STANDARD_SET = 0x7DF;
var CLOCK_UNSYNCED = 0x200;
var K_AGE_FIRST = 2, K_AGE_STEP = 7, K_AGE = 2;

var STATUS_NAMES = [
  "temperature_fault", "humidity_fault", "pressure_fault", "illuminance_fault", "fill_fault",
  "voltage_fault", "tamper", "buffer_overflow", "config_error", "clock_unsynced",
  "pm_fault", "sound_fault", "pm_humid"  // v3: bits 10..12; 13..15 reserved
];

// v3 extension fields, by id: name, absolute width, largest code, delta order, scale (value = code / scale).
var EXT_FIELDS = [
  ["pm1", 10, 1000, 2, 1],
  ["pm2_5", 10, 1000, 2, 1],
  ["pm10", 10, 1000, 2, 1],
  ["laeq", 11, 1400, 3, 10],
  ["lamax", 11, 1400, 3, 10],
  ["energy", 26, 67108863, 3, 1],          // Wh, the lamp's cumulative counter
  ["burning_hours", 24, 16777215, 3, 100]  // h, the lamp's cumulative burning time
];

// round(2^(j/19) * 65536): illuminance code c >= 1 stands for 2^((c-1)/19) mlx.
var LUX_STEP = [
  65536, 67971, 70496, 73116, 75832, 78650, 81572, 84603, 87746, 91007,
  94388, 97895, 101532, 105305, 109217, 113275, 117484, 121849, 126376
];
var CRC_NIBBLE = [
  0x0000, 0x1021, 0x2042, 0x3063, 0x4084, 0x50A5, 0x60C6, 0x70E7,
  0x8108, 0x9129, 0xA14A, 0xB16B, 0xC18C, 0xD1AD, 0xE1CE, 0xF1EF
];

// Wire order of the presence bitmap: name, flag, absolute width, largest valid code, delta order.
var FIELDS = [
  ["temperature", 0x400, 11, 1250, 2],
  ["humidity", 0x200, 8, 200, 1],
  ["pressure", 0x100, 13, 8000, 2],
  ["illuminance", 0x080, 9, 511, 2],
  ["fill", 0x040, 7, 100, 0],
  ["distance", 0x020, 14, 16383, 3],
  ["lamp", 0x010, 8, 201, 0],
  ["voltage", 0x008, 11, 1050, 1]
];
var P_STATUS = 0x004, P_SEQ = 0x002, P_AGE = 0x001;

function PayloadError(message, byteIndex) {
  this.message = byteIndex === null ? message : "byte " + byteIndex + ": " + message;
  this.byteIndex = byteIndex;
}

function crc16(bytes, crc) {
  for (var i = 0; i < bytes.length; i++) {
    var b = bytes[i];
    crc = ((crc << 4) & 0xFFFF) ^ CRC_NIBBLE[((crc >> 12) ^ (b >> 4)) & 15];
    crc = ((crc << 4) & 0xFFFF) ^ CRC_NIBBLE[((crc >> 12) ^ b) & 15];
  }
  return crc;
}

function lux(code) {
  if (code === 0) return 0;
  var e = Math.floor((code - 1) / 19), j = (code - 1) % 19;
  // Integer arithmetic in doubles (< 2^53), rounded to 1 microlux as the Python decoder does.
  var microlux = Math.floor((LUX_STEP[j] * Math.pow(2, e) * 1000 + 32768) / 65536);
  return microlux / 1e6;
}

function ageSeconds(code) {
  if (code < 128) return code;
  return (64 + (code & 63)) * Math.pow(2, (code >> 6) - 1);
}

function fieldValue(name, code) {
  switch (name) {
    case "temperature": return (code - 400) / 10;
    case "humidity": return code / 2;
    case "pressure": return (code + 3000) / 10;
    case "illuminance": return lux(code);
    case "voltage": return (code < 500 ? code * 10 : 5000 + (code - 500) * 100) / 1000;
    default: return code;
  }
}

function Bits(bytes, start) {
  this.bytes = bytes;
  this.total = bytes.length * 8;
  this.pos = start;
}
Bits.prototype.where = function () { return this.pos >> 3; };
Bits.prototype.read = function (n, what) {
  if (this.pos + n > this.total) {
    var missing = this.pos + n - this.total;
    throw new PayloadError("truncated: the frame ends inside " + what + " (" + this.bytes.length + " bytes, " +
      what + " needs " + missing + " more bit" + (missing === 1 ? "" : "s") + ")",
      Math.min(this.pos >> 3, this.bytes.length - 1));
  }
  var v = 0;
  for (var i = 0; i < n; i++) {
    v = v * 2 + ((this.bytes[this.pos >> 3] >> (7 - (this.pos & 7))) & 1);
    this.pos++;
  }
  return v;
};
Bits.prototype.expGolomb = function (k, what) {
  var start = this.where(), zeros = 0;
  while (this.read(1, what) === 0) {
    zeros++;
    if (zeros > MAX_EG_ZEROS) {
      throw new PayloadError("malformed " + what + ": more than " + MAX_EG_ZEROS + " leading zero bits", start);
    }
  }
  return Math.pow(2, zeros + k) + this.read(zeros + k, what) - Math.pow(2, k);
};
Bits.prototype.signed = function (k, what) {
  var z = this.expGolomb(k, what);
  return z % 2 === 0 ? z / 2 : -(z + 1) / 2;
};

function signedText(d) { return (d >= 0 ? "+" : "") + d; }

// v3 extension presence: 0, or 1 then 8-bit groups (id 0 first), each followed by a more-groups bit.
function readExtPresence(bits, label) {
  var at = bits.where();
  if (!bits.read(1, label + " extension presence")) return 0;
  var ext = bits.read(8, label + " extension presence");
  var known = (0xFF << (8 - EXT_FIELDS.length)) & 0xFF;
  if (ext & ~known & 0xFF) {
    var first = 0;
    while (!((ext & (0x80 >> first)) && !(known & (0x80 >> first)))) first++;
    throw new PayloadError(label + " extension field " + first + " is unknown to this decoder (it knows 0.." +
      (EXT_FIELDS.length - 1) + "): newer firmware? update the decoder", at);
  }
  if (bits.read(1, label + " extension presence")) {
    throw new PayloadError(label + " extension fields beyond id 7 are unknown to this decoder: newer firmware? update the decoder", at);
  }
  if (ext === 0) throw new PayloadError(label + " extension presence is not canonical (an empty group)", at);
  return ext;
}

function readReading(bits, index, st) {
  var label = "reading " + index, start = bits.where(), mask, ext = 0;
  if (index === 0) {
    if (bits.read(1, label + " presence")) {
      mask = STANDARD_SET;
    } else {
      mask = bits.read(11, label + " presence bitmap");
      if (mask === STANDARD_SET || (mask === 0 && !st.v3)) {
        throw new PayloadError(label + " presence bitmap is " +
          (mask === 0 ? "empty" : "not canonical (the standard set has a 1-bit code)"), start);
      }
    }
    if (st.v3) {
      ext = readExtPresence(bits, label);
      if (mask === 0 && ext === 0) throw new PayloadError(label + " presence bitmap is empty", start);
    }
    st.mask = mask;
    st.ext = ext;
  } else if (bits.read(1, label + " presence flag")) {
    mask = bits.read(11, label + " presence bitmap");
    if (st.v3) ext = readExtPresence(bits, label);
    if ((mask === 0 && ext === 0) || (mask === st.mask && ext === st.ext)) {
      throw new PayloadError(label + " presence bitmap is " + (mask === 0 && ext === 0 ? "empty" : "not canonical"), start);
    }
  } else {
    mask = st.mask;
    ext = st.ext;
  }
  var out = {}, at, code, delta;
  for (var f = 0; f < FIELDS.length; f++) {
    var name = FIELDS[f][0], flag = FIELDS[f][1], width = FIELDS[f][2], top = FIELDS[f][3], k = FIELDS[f][4];
    if (!(mask & flag)) continue;
    at = bits.where();
    var what = label + " " + name;
    if (index && (st.mask & flag)) {
      delta = bits.signed(k, what + " delta");
      code = st.base[name] + delta;
      if (code < 0 || code > top) {
        throw new PayloadError(what + ": delta " + signedText(delta) + " leads to code " + code + ", outside 0.." + top, at);
      }
    } else {
      code = bits.read(width, what);
      if (code > top) throw new PayloadError(what + ": code " + code + " is outside 0.." + top, at);
      if (index === 0) st.base[name] = code;
    }
    if (name === "lamp") {
      out.lamp = code >> 1;
      out.lamp_fault = (code & 1) === 1;
    } else {
      out[name] = fieldValue(name, code);
    }
  }
  for (var x = 0; x < EXT_FIELDS.length; x++) {
    var xname = EXT_FIELDS[x][0], xflag = 0x80 >> x, xwidth = EXT_FIELDS[x][1], xtop = EXT_FIELDS[x][2];
    if (!(ext & xflag)) continue;
    at = bits.where();
    var xwhat = label + " " + xname;
    if (index && (st.ext & xflag)) {
      delta = bits.signed(EXT_FIELDS[x][3], xwhat + " delta");
      code = st.base[xname] + delta;
      if (code < 0 || code > xtop) {
        throw new PayloadError(xwhat + ": delta " + signedText(delta) + " leads to code " + code + ", outside 0.." + xtop, at);
      }
    } else {
      code = bits.read(xwidth, xwhat);
      if (code > xtop) throw new PayloadError(xwhat + ": code " + code + " is outside 0.." + xtop, at);
      if (index === 0) st.base[xname] = code;
    }
    out[xname] = EXT_FIELDS[x][4] === 1 ? code : code / EXT_FIELDS[x][4];
  }
  var nflags = st.v3 ? 16 : 10;
  if (mask & P_STATUS) {
    at = bits.where();
    var flags;
    if (index === 0) {
      flags = 0;
      if (bits.read(1, label + " status")) {
        flags = CLOCK_UNSYNCED;
        if (bits.read(1, label + " status")) {
          flags = bits.read(nflags, label + " status flags");
          if (flags === 0 || flags === CLOCK_UNSYNCED) {
            throw new PayloadError(label + " status flags are not canonical (they have a shorter code)", at);
          }
        }
      }
      st.base.status = flags;
    } else {
      var ref = (st.mask & P_STATUS) ? st.base.status : 0;
      flags = ref;
      if (bits.read(1, label + " status")) {
        flags = bits.read(nflags, label + " status flags");
        if (flags === ref) {
          throw new PayloadError(label + " status flags are not canonical (long form repeats the reference)", at);
        }
      }
    }
    if (flags & V3_RESERVED) {
      throw new PayloadError(label + " status flags: reserved bit set (0x" + ("000" + flags.toString(16)).slice(-4) + ")", at);
    }
    out.status = [];
    for (var i = 0; i < nflags; i++) if ((flags >> i) & 1) out.status.push(STATUS_NAMES[i]);
  }
  if (mask & P_SEQ) {
    var seq;
    if (st.seq === null) {
      seq = bits.read(16, label + " seq");
    } else {
      delta = bits.signed(0, label + " seq delta");
      if (delta < -32768 || delta > 32767) {
        throw new PayloadError(label + " seq: delta " + signedText(delta) + " is outside -32768..32767", bits.where());
      }
      seq = (st.seq + index - st.seqAt + delta + 65536 * 2) % 65536;
    }
    st.seq = seq;
    st.seqAt = index;
    out.seq = seq;
  }
  if (mask & P_AGE) {
    at = bits.where();
    var age;
    if (st.ages.length === 0) {
      code = bits.expGolomb(K_AGE_FIRST, label + " age");
      if (code > AGE_CODE_MAX) {
        throw new PayloadError(label + " age: code " + code + " is beyond the largest age (code " + AGE_CODE_MAX + ")", at);
      }
      age = ageSeconds(code);
    } else {
      var pred = st.ages[st.ages.length - 1];
      if (st.ages.length > 1) pred = Math.min(Math.max(2 * pred - st.ages[st.ages.length - 2], 0), AGE_MAX);
      delta = bits.signed(st.ages.length === 1 ? K_AGE_STEP : K_AGE, label + " age delta");
      age = pred + delta;
      if (age < 0 || age > AGE_MAX) {
        throw new PayloadError(label + " age: delta " + signedText(delta) + " leads to " + age + " s, outside 0.." + AGE_MAX, at);
      }
    }
    st.ages.push(age);
    out.age = age;
  }
  return out;
}

function unsupported(version) {
  return "this decoder reads versions " + FORMAT_VERSION + " and " + FORMAT_V3 + " \u2014 " + (version === 1 ?
    "version 1 was a pre-release format that no board sends" :
    "not a Lanterne payload, or one from newer firmware");
}

// fPort null: an MQTT frame (byte 0 the version); a number: a LoRaWAN payload on that FPort.
function decodeFrame(bytes, fPort) {
  var n = bytes.length, start, prefix, shortest, version;
  for (var i = 0; i < n; i++) {
    if (typeof bytes[i] !== "number" || bytes[i] < 0 || bytes[i] > 255 || bytes[i] % 1 !== 0) {
      throw new PayloadError("not a byte: " + bytes[i], i);
    }
  }
  if (fPort === null) {
    if (n === 0) throw new PayloadError("empty payload: a frame starts with the format version byte 0x02", 0);
    if (bytes[0] !== FORMAT_VERSION && bytes[0] !== FORMAT_V3) {
      var hex = ("0" + bytes[0].toString(16)).slice(-2);
      throw new PayloadError("unsupported format version " + bytes[0] + " (0x" + hex + "): " + unsupported(bytes[0]), 0);
    }
    version = bytes[0];
    start = 8; prefix = 0xFFFF; shortest = MIN_PAYLOAD + 1;
  } else {
    if (typeof fPort !== "number" || fPort % 1 !== 0 || fPort <= FPORT_BASE || fPort >= FPORT_BASE + 100) {
      throw new PayloadError("FPort " + fPort + " is not a Lanterne payload port: format version v travels on FPort " +
        FPORT_BASE + " + v (this decoder reads versions " + FORMAT_VERSION + " and " + FORMAT_V3 + ", FPorts " +
        FPORT + " and " + FPORT_V3 + ")", null);
    }
    version = fPort - FPORT_BASE;
    if (version !== FORMAT_VERSION && version !== FORMAT_V3) {
      throw new PayloadError("FPort " + fPort + ": unsupported format version " + version + ": " + unsupported(version), null);
    }
    if (n === 0) throw new PayloadError("empty payload on FPort " + fPort, 0);
    start = 0; prefix = crc16([version], 0xFFFF); shortest = MIN_PAYLOAD;
  }
  if (n > MAX_FRAME) throw new PayloadError("oversized: " + n + " bytes, a frame is at most " + MAX_FRAME + " bytes", MAX_FRAME);
  if (n < shortest) throw new PayloadError("truncated: " + n + " bytes, the shortest frame is " + shortest + " bytes", n - 1);
  var bits = new Bits(bytes, start), readings = [];
  var st = {v3: version === FORMAT_V3, mask: 0, ext: 0, base: {}, seq: null, seqAt: 0, ages: []};
  do {
    readings.push(readReading(bits, readings.length, st));
  } while (bits.read(1, "the end-of-readings bit"));
  var checkBits = bits.total - bits.pos;
  if (checkBits < MIN_CHECK_BITS) {
    throw new PayloadError("truncated: " + checkBits + " bits left for the check field after the last reading, it needs " +
      MIN_CHECK_BITS + " to " + MAX_CHECK_BITS, n - 1);
  }
  if (checkBits > MAX_CHECK_BITS) {
    var expected = Math.floor((bits.pos + MIN_CHECK_BITS + 7) / 8);
    var extra = n - expected;
    throw new PayloadError("oversized: " + extra + " unexpected byte" + (extra === 1 ? "" : "s") +
      " after the end of the frame (it ends after byte " + (expected - 1) + ")", expected);
  }
  var mask = (1 << checkBits) - 1;
  var last2 = (bytes[n - 2] << 8) | bytes[n - 1];  // n >= 3 here
  var sent = last2 & mask;
  var zeroed = bytes.slice(0, n);
  var tail = last2 & ~mask & 0xFFFF;
  zeroed[n - 2] = tail >> 8;
  zeroed[n - 1] = tail & 0xFF;
  var computed = crc16(zeroed, prefix) >> (16 - checkBits);
  if (sent !== computed) {
    throw new PayloadError("check field mismatch (got 0x" + sent.toString(16) + ", computed 0x" + computed.toString(16) +
      " over " + checkBits + " bits): the frame is corrupted or not a Lanterne payload", n - 1 - (checkBits > 8 ? 1 : 0));
  }
  return {version: version, readings: readings};
}

function decodeUplink(input) {
  var bytes = input && input.bytes;
  if (!bytes || typeof bytes.length !== "number") {
    return {warnings: [], errors: ["input.bytes is missing: expected the frame as an array of bytes"]};
  }
  var fPort = input.fPort === undefined ? null : input.fPort;
  try {
    return {data: decodeFrame(Array.prototype.slice.call(bytes), fPort), warnings: [], errors: []};
  } catch (e) {
    if (e instanceof PayloadError) return {warnings: [], errors: [e.message]};
    return {warnings: [], errors: ["internal decoder error: " + e]};
  }
}

if (typeof module !== "undefined") module.exports = {decodeUplink: decodeUplink};
