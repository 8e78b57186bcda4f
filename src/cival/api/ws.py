"""The live-channel WebSocket, `GET /api/v1/ws`.

Authenticate with `?token=<session token>` (browsers cannot set headers on a WebSocket) or
`Authorization: Bearer <token>`. A missing or invalid token gets `{"type":"error","error":<code>,"detail":...}` and
close code 4401 with the code as reason.

Client messages (JSON text):
- `{"op":"subscribe","channels":[...]}` -> `{"type":"subscribed","channels":[...]}`; all or nothing: one unknown
  name and none is subscribed (`{"type":"error","error":"unknown_channel","detail":...,"channels":[<unknown>]}`).
  When it subscribes user channels the reply carries `"seq"`, the caller's newest event number; with
  `"since":N` the events after N on those channels are replayed first (`"replayed":<count>` in the reply), or
  `{"type":"resync","reason":"too_old"|"expired"|"ahead"|"unavailable",...}` follows it (docs/api.md, D30-D31)
- `{"op":"unsubscribe","channels":[...]}` -> `{"type":"unsubscribed","channels":[...]}`
- `{"op":"ping"}` -> `{"type":"pong"}`

Channels: `ticker:<exchange>:<symbol>`, `book:<exchange>:<symbol>`, `candles:<exchange>:<symbol>:<timeframe>`, and
the caller's own `orders`, `trades`, `positions`, `balances`, `portfolio`, `alerts`; at most 100 per connection.

Server frames: `{"type":"update","channel":...,"data":{...}}` (and `"seq"`: per user on user channels),
`{"type":"heartbeat","ts":...}` when the connection is otherwise quiet (a client never waits more than 15 s for a
frame), and errors `invalid_json`, `invalid_message`, `unknown_channel`, `too_many_channels`, which leave the
connection open (so does `service_unavailable` when a subscription cannot start). Close codes: 4401 not
authenticated (also when the session is revoked while connected), 4008 slow consumer (the client fell 1,000
messages behind), 1001 server shutting down, 1011 channel feed lost, 1013 session store unavailable at connect;
reconnect (and resubscribe) after any of them but 4401.
"""

from __future__ import annotations

from fastapi import APIRouter, WebSocket

from cival.services.websocket_manager import WebSocketManager

router = APIRouter()


def _token(websocket: WebSocket) -> str | None:
    scheme, _, credentials = websocket.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return websocket.query_params.get("token")


@router.websocket("/api/v1/ws")
async def live_channels(websocket: WebSocket) -> None:
    manager: WebSocketManager = websocket.app.state.registry.websockets
    await manager.serve(websocket, _token(websocket))
