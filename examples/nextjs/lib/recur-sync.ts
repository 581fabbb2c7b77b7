// Send user changes to recur-sync, signed per Standard Webhooks (the `standardwebhooks` package).
//
// Environment: RECUR_SYNC_URL (e.g. https://sync.example.com/webhooks/user-updated) and
// WEBHOOK_SECRET (whsec_..., the same secret recur-sync has).
//
// Give each change one event id and the time it happened in your database, and send the same
// event on every retry: recur-sync stores it once and orders fields by that time.
import { Webhook } from "standardwebhooks";

export type UserFields = {
  name?: string;
  email?: string; // never written to Recur; used to bind by email and in reports
  metadata?: Record<string, unknown>; // the whole object: it replaces the one before
};

export type UserUpdated = {
  id: string;
  type: "user.updated";
  timestamp: string;
  data: UserFields & { user_id: string };
};

export type ExternalIdChanged = {
  id: string;
  type: "user.external_id_changed";
  timestamp: string;
  data: { user_id: string; new_user_id: string | null }; // null unbinds the Recur customer
};

export type RecurSyncEvent = UserUpdated | ExternalIdChanged;

export type Answer =
  | { status: "accepted"; event_id: string; user_id: string }
  | { status: "duplicate"; event_id: string };

/** recur-sync refused the event for good (400, 401, 413, 422): fix it, do not retry. */
export class EventRejected extends Error {
  constructor(
    readonly status: number,
    readonly answer: unknown,
  ) {
    super(`recur-sync refused the event: ${status} ${JSON.stringify(answer)}`);
  }
}

/** Not stored after every attempt: send the same event again later. */
export class NotStored extends Error {}

const RETRYABLE = new Set([408, 429, 500, 502, 503, 504]);

export function newEventId(): string {
  return `evt_${crypto.randomUUID()}`;
}

/** A `user.updated` event; `changedAt` is when the change happened (e.g. the row's updated_at). */
export function userUpdated(
  userId: string,
  fields: UserFields,
  changedAt: Date,
  id: string = newEventId(),
): UserUpdated {
  return {
    id,
    type: "user.updated",
    timestamp: changedAt.toISOString(),
    data: { user_id: userId, ...fields },
  };
}

/** A `user.external_id_changed` event; `newUserId: null` unbinds the Recur customer. */
export function externalIdChanged(
  userId: string,
  newUserId: string | null,
  changedAt: Date,
  id: string = newEventId(),
): ExternalIdChanged {
  return {
    id,
    type: "user.external_id_changed",
    timestamp: changedAt.toISOString(),
    data: { user_id: userId, new_user_id: newUserId },
  };
}

export type SendOptions = {
  url?: string;
  secret?: string;
  attempts?: number;
  baseDelayMs?: number;
  maxDelayMs?: number;
};

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function answerOf(response: Response): Promise<unknown> {
  const text = await response.text();
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

/**
 * Deliver `event` until recur-sync has stored it: resolves with its answer (202 accepted, or 200
 * duplicate when an earlier attempt got through). Retries 408, 429, 5xx and network errors with
 * jittered exponential backoff and the same event id, signing each attempt anew (the signed time
 * must be within 5 minutes of recur-sync's clock).
 */
export async function sendEvent(event: RecurSyncEvent, options: SendOptions = {}): Promise<Answer> {
  const url = options.url ?? process.env.RECUR_SYNC_URL;
  const secret = options.secret ?? process.env.WEBHOOK_SECRET;
  if (!url || !secret) {
    throw new Error("set RECUR_SYNC_URL and WEBHOOK_SECRET");
  }
  const { attempts = 5, baseDelayMs = 500, maxDelayMs = 10_000 } = options;
  const webhook = new Webhook(secret);
  const body = JSON.stringify(event); // serialized once: the bytes signed are the bytes sent
  let last = "";
  for (let attempt = 1; attempt <= attempts; attempt++) {
    const sentAt = new Date();
    let retryAfterMs = 0;
    try {
      const response = await fetch(url, {
        method: "POST",
        headers: {
          "content-type": "application/json",
          "webhook-id": event.id,
          "webhook-timestamp": String(Math.floor(sentAt.getTime() / 1000)),
          "webhook-signature": webhook.sign(event.id, sentAt, body),
        },
        body,
        signal: AbortSignal.timeout(10_000),
      });
      const answer = await answerOf(response);
      if (response.status === 202 || response.status === 200) {
        return answer as Answer;
      }
      if (!RETRYABLE.has(response.status)) {
        throw new EventRejected(response.status, answer);
      }
      retryAfterMs = 1000 * Number(response.headers.get("retry-after") ?? 0) || 0;
      last = `${response.status} ${JSON.stringify(answer)}`;
    } catch (error) {
      if (error instanceof EventRejected) {
        throw error;
      }
      last = String(error); // network error or timeout: it may have been stored; retry the same id
    }
    if (attempt < attempts) {
      const backoff =
        Math.min(maxDelayMs, baseDelayMs * 2 ** (attempt - 1)) * (0.5 + Math.random() / 2);
      await sleep(Math.max(backoff, retryAfterMs));
    }
  }
  throw new NotStored(`${event.id} not stored after ${attempts} attempts (last: ${last})`);
}
