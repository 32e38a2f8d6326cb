"""The reference chapter's basic ChatConsumer, as printed (only formatting differs).

One group per room; every message is saved with `database_sync_to_async` and then sent to
the group; every group event is turned into JSON with `json.dumps` in the handler of each
receiving consumer; joins and leaves are announced to the room.
"""

import asyncio
import json

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer

from .models import ChatRoom, Message


class ChatConsumer(AsyncWebsocketConsumer):
    """Basic chat consumer for real-time messaging."""

    async def connect(self):
        """Handle WebSocket connection."""
        self.room_name = self.scope["url_route"]["kwargs"]["room_name"]
        self.room_group_name = f"chat_{self.room_name}"
        self.user = self.scope["user"]
        # Reject anonymous users
        if not self.user.is_authenticated:
            await self.close()
            return
        # Join room group
        await self.channel_layer.group_add(self.room_group_name, self.channel_name)
        # Accept WebSocket connection
        await self.accept()
        # Notify room about user joining
        await self.channel_layer.group_send(
            self.room_group_name,
            {
                "type": "user_joined",
                "user": self.user.username,
                "message": f"{self.user.username} joined the room",
            },
        )
        # Send recent messages to newly connected user
        await self.send_recent_messages()

    async def disconnect(self, close_code):
        """Handle WebSocket disconnection."""
        if hasattr(self, "room_group_name"):
            # Notify room about user leaving
            await self.channel_layer.group_send(
                self.room_group_name,
                {
                    "type": "user_left",
                    "user": self.user.username,
                    "message": f"{self.user.username} left the room",
                },
            )
            # Leave room group
            await self.channel_layer.group_discard(self.room_group_name, self.channel_name)

    async def receive(self, text_data):
        """Handle messages from WebSocket."""
        try:
            text_data_json = json.loads(text_data)
            message_type = text_data_json.get("type", "message")
            if message_type == "message":
                await self.handle_chat_message(text_data_json)
            elif message_type == "typing":
                await self.handle_typing_indicator(text_data_json)
            elif message_type == "ping":
                await self.handle_ping()
            else:
                await self.send_error("Unknown message type")
        except json.JSONDecodeError:
            await self.send_error("Invalid JSON")
        except Exception as e:
            await self.send_error(f"Error processing message: {str(e)}")

    async def handle_chat_message(self, data):
        """Handle chat message."""
        message_content = data.get("message", "").strip()
        if not message_content:
            await self.send_error("Empty message")
            return
        # Save message to database
        message = await self.save_message(message_content)
        if message:
            # Send message to room group
            await self.channel_layer.group_send(
                self.room_group_name,
                {
                    "type": "chat_message",
                    "message": message_content,
                    "user": self.user.username,
                    "user_id": self.user.id,
                    "timestamp": message.created_at.isoformat(),
                    "message_id": message.id,
                },
            )

    async def handle_typing_indicator(self, data):
        """Handle typing indicator."""
        is_typing = data.get("is_typing", False)
        await self.channel_layer.group_send(
            self.room_group_name,
            {
                "type": "typing_indicator",
                "user": self.user.username,
                "user_id": self.user.id,
                "is_typing": is_typing,
            },
        )

    async def handle_ping(self):
        """Handle ping message for connection keepalive."""
        await self.send(text_data=json.dumps({
            "type": "pong",
            "timestamp": asyncio.get_event_loop().time(),
        }))

    # Group message handlers
    async def chat_message(self, event):
        """Send chat message to WebSocket."""
        await self.send(text_data=json.dumps({
            "type": "message",
            "message": event["message"],
            "user": event["user"],
            "user_id": event["user_id"],
            "timestamp": event["timestamp"],
            "message_id": event["message_id"],
        }))

    async def user_joined(self, event):
        """Send user joined notification to WebSocket."""
        # Don't send to the user who joined
        if event["user"] != self.user.username:
            await self.send(text_data=json.dumps({
                "type": "user_joined",
                "user": event["user"],
                "message": event["message"],
            }))

    async def user_left(self, event):
        """Send user left notification to WebSocket."""
        if event["user"] != self.user.username:
            await self.send(text_data=json.dumps({
                "type": "user_left",
                "user": event["user"],
                "message": event["message"],
            }))

    async def typing_indicator(self, event):
        """Send typing indicator to WebSocket."""
        if event["user_id"] != self.user.id:
            await self.send(text_data=json.dumps({
                "type": "typing",
                "user": event["user"],
                "is_typing": event["is_typing"],
            }))

    async def send_error(self, error_message):
        """Send error message to WebSocket."""
        await self.send(text_data=json.dumps({"type": "error", "message": error_message}))

    async def send_recent_messages(self):
        """Send recent messages to newly connected user."""
        messages = await self.get_recent_messages()
        for message in messages:
            await self.send(text_data=json.dumps({
                "type": "message",
                "message": message.content,
                "user": message.user.username,
                "user_id": message.user.id,
                "timestamp": message.created_at.isoformat(),
                "message_id": message.id,
            }))

    @database_sync_to_async
    def save_message(self, content):
        """Save message to database."""
        try:
            room, created = ChatRoom.objects.get_or_create(name=self.room_name)
            return Message.objects.create(room=room, user=self.user, content=content)
        except Exception as e:
            print(f"Error saving message: {e}")
            return None

    @database_sync_to_async
    def get_recent_messages(self):
        """Get recent messages from database."""
        try:
            room = ChatRoom.objects.get(name=self.room_name)
            return list(
                room.messages.select_related("user").order_by("-created_at")[:50].reverse()
            )
        except ChatRoom.DoesNotExist:
            return []
