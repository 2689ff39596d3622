// Independent check of captured LoRaWAN 1.0.3 frames with the npm package lora-packet.
// Input (stdin): {"app_key": hex, "frames": [hex PHYPayload, ...]} in air order, one device.
// Output (stdout): one JSON object per frame: what lora-packet reads and whether the MIC holds.
// The session keys come from lora-packet's own derivation (join request + join accept + AppKey),
// never from the code under test.
"use strict";
const path = require("path");
const lora = require(process.env.LORA_PACKET || path.join(__dirname, "../../build/node/node_modules/lora-packet"));

const input = JSON.parse(require("fs").readFileSync(0, "utf8"));
const appKey = Buffer.from(input.app_key, "hex");
let devNonce = null;
let keys = null;
const out = [];
for (const hex of input.frames) {
  const wire = Buffer.from(hex, "hex");
  let packet = lora.fromWire(wire);
  const mtype = packet.getMType();
  const r = { mtype };
  if (mtype === "Join Request") {
    r.mic_ok = lora.verifyMIC(packet, null, appKey);
    r.dev_eui = packet.DevEUI.toString("hex");
    r.join_eui = packet.AppEUI.toString("hex");
    r.dev_nonce = packet.DevNonce.toString("hex");
    devNonce = packet.DevNonce;
  } else if (mtype === "Join Accept") {
    packet = lora.fromWire(lora.decryptJoinAccept(packet, appKey));
    r.mic_ok = lora.verifyMIC(packet, null, appKey);
    r.dev_addr = packet.DevAddr.toString("hex");
    r.net_id = packet.NetID.toString("hex");
    r.app_nonce = packet.AppNonce.toString("hex");
    keys = lora.generateSessionKeys(appKey, packet.NetID, packet.AppNonce, devNonce);
    r.nwk_s_key = keys.NwkSKey.toString("hex");
    r.app_s_key = keys.AppSKey.toString("hex");
  } else {
    r.dev_addr = packet.DevAddr.toString("hex");
    r.fcnt = packet.getFCnt();
    r.fport = packet.getFPort();
    r.ack = packet.getFCtrlACK();
    r.confirmed = packet.isConfirmed();
    r.fopts = packet.FOpts ? packet.FOpts.toString("hex") : "";
    if (keys) {
      r.mic_ok = lora.verifyMIC(packet, keys.NwkSKey);
      r.payload = r.fport === null ? "" : lora.decrypt(packet, keys.AppSKey, keys.NwkSKey).toString("hex");
    }
  }
  out.push(r);
}
process.stdout.write(JSON.stringify(out) + "\n");
