// app/api/webhooks/user-updated/route.ts
//
// The seed's own example, where your app PATCHes Recur directly when a user changes, rewritten
// to hand the change to recur-sync instead: it signs the event and posts it, and recur-sync does
// the calling, retrying, ordering and dead-lettering. No RECUR_SECRET_KEY in your app.
//
// Callers post {userId, name?, email?, metadata?, eventId?, updatedAt?}. Pass your change's own
// id as eventId and its updated_at as updatedAt, so that a retry of this request is the same
// event (answered "duplicate") and ordering follows your database, not the network.
import { NextRequest, NextResponse } from "next/server";

import {
  EventRejected,
  NotStored,
  newEventId,
  sendEvent,
  userUpdated,
} from "../../../../lib/recur-sync";

type UserChange = {
  userId: string;
  name?: string;
  email?: string;
  metadata?: Record<string, unknown>;
  eventId?: string;
  updatedAt?: string;
};

export async function POST(req: NextRequest): Promise<NextResponse> {
  const { userId, name, email, metadata, eventId, updatedAt } = (await req.json()) as UserChange;

  const event = userUpdated(
    userId,
    { name, email, metadata },
    updatedAt ? new Date(updatedAt) : new Date(),
    eventId ?? newEventId(),
  );
  try {
    // A route handler should not wait minutes: a few quick attempts, then the caller retries.
    const answer = await sendEvent(event, { attempts: 3 });
    console.log(`user ${userId}: recur-sync ${answer.status} ${answer.event_id}`);
    return NextResponse.json({ success: true, eventId: event.id }, { status: 202 });
  } catch (error) {
    if (error instanceof EventRejected) {
      // 400/401/413/422: a bug or a wrong WEBHOOK_SECRET; retrying will not help.
      return NextResponse.json({ success: false, error: error.answer }, { status: 400 });
    }
    if (error instanceof NotStored) {
      // recur-sync unavailable: ask the caller to retry with the same eventId.
      return NextResponse.json({ success: false, eventId: event.id }, { status: 503 });
    }
    throw error;
  }
}
